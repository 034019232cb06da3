"""`alignloop loop --human`: the round serves the annotation app and waits until its judgments are in."""

import re
import threading


from alignloop.config.base import load_config
from alignloop.feedback import open_store
from alignloop.feedback.simulate import SimulateConfig, run_simulated
from alignloop.loop.config import LoopConfig
from alignloop.loop.rounds import collect_human, round_judgments
from alignloop.runs import RunDir


def test_human_round_waits_for_its_quota_over_http(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    store = open_store(run.feedback_db)
    round_id = store.create_round("round 1", number=1)
    store.add_samples(round_id, [{"prompt": f"Tom had a ball {i}.", "responses": [f"Tom shared it {i}. The end.",
                                                                              f"Tom kept it {i}."]} for i in range(5)])
    store.close()
    cfg = load_config(LoopConfig, None, ["human.port=0", "human.poll_seconds=0.1",
                                             "human.linger_seconds=2"])

    messages: list[str] = []
    served = threading.Event()

    def log(message: str) -> None:
        messages.append(message)
        if "annotation app at" in message:
            served.set()

    result: dict = {}

    def wait_for_people() -> None:
        try:
            result["made"] = collect_human(run, cfg, 1, log)
        except BaseException as exc:  # reported by the assertions below
            result["error"] = exc
            served.set()

    # The annotators' side opens the store before the round starts serving.
    annotators = open_store(run.feedback_db)
    waiter = threading.Thread(target=wait_for_people, daemon=True)
    waiter.start()
    assert served.wait(30), messages
    assert "error" not in result, result
    assert waiter.is_alive()  # nobody has judged yet: the round is waiting
    assert any("waiting for 5 judgments" in m for m in messages), messages
    url = re.search(r"http://[\d.]+:\d+", next(m for m in messages if "annotation app at" in m)).group(0)

    # People (here: simulated ones, through the same HTTP API) judge the round's items.
    try:
        run_simulated(annotators, SimulateConfig(personas=1, both_bad_below=0), base_url=url)
    finally:
        annotators.close()
    waiter.join(30)
    assert not waiter.is_alive()
    assert result.get("made") == 5, result
    assert any("5/5 judgments" in m for m in messages)
    check = open_store(run.feedback_db)
    try:
        assert round_judgments(check, 1) == (5, 5)
    finally:
        check.close()
