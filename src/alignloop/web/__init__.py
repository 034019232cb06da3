"""The annotation web app: `create_app(store)` (FastAPI, Jinja2 templates, plain JavaScript).

Security in one place each: `security.py` (argon2 passwords, tokens, login
rate limit, body size limit, headers), `deps.py` (session gate, roles, CSRF).
"""
