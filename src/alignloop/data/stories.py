"""The built-in story task: a generator of short children's stories that the project owns.

Every story is assembled from short sentence templates: a main character (a
child or an animal with a name), a friend, a small problem, and the main
character's response to it. The response is kind (about half of the stories,
and then things end happily) or unkind, or the story takes a sad turn on its
own. Some stories drift to a new character half way and never come back; most
end with a closing line ("From that day on, ...", "The end.").

These variations are what make the later RLHF stages meaningful: the gold judge
(`alignloop.judges.gold`) prefers kind, happy continuations that stay with the
prompt's character and end properly, and the generator makes every one of those
properties vary on its own, so a reward model has something to learn.

The word lists that decide kindness live here and are imported by
`alignloop.judges.features`, so the generator and the judge agree on what a
kind act is.

Randomness only ever comes from a `random.Random` seeded with a string built
from the caller's seed and a stream name, so one seed gives the same corpus on
every machine and every Python version that keeps `random`'s string seeding.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from alignloop import atomic
from alignloop.errors import DataError

# ---------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------

GIRL_NAMES = (
    "Lily Mia Emma Ava Sophie Lucy Anna Ella Chloe Zoe Amy Sara Kate Nora Ruby Maya Lila Rosa "
    "Ellie Hannah Molly Abby Jenny Kara Tina Lena Nina Olivia Isla Ivy Alice Clara Eva Jade "
    "Julia Laura Lisa Mary Nancy Paula Rita Sally Tara Wendy Bella Daisy Fiona Gina Holly Iris "
    "Jill Kelly Lola Megan Nell Penny Rachel Susie Tess Vera Willa Anya Becky Cora Dora Elsie "
    "Flora Greta Heidi Ingrid Josie Kitty Leah Mabel Nadia Opal Polly Rina Stella Tilly Una "
    "Violet Wanda Yara Zara Ada Bea Cleo Dina Edie Fay Gemma Hazel Ines Jane Keira Luna Mira "
    "Nia Orla Pia Romy Sue Tia Uma Vicky Wren Xena Yasmin Zelda Amara Bonnie Carla Delia Erin "
    "Freya Gwen Hattie Imogen Jess Kayla Lottie Maisie Noemi Olive Peggy Remi Sadie Thea"
).split()

BOY_NAMES = (
    "Tom Max Ben Sam Leo Jack Tim Finn Noah Liam Owen Jake Luke Adam Eli Theo Oscar Henry Ivan "
    "Hugo Alex Ryan Dylan Mason Ethan Felix Oliver Lucas Jonah Caleb Danny Eddie Freddie Gabe "
    "Harry Isaac Joey Kevin Lenny Mike Ned Ollie Pete Quinn Ricky Simon Teddy Victor Wes Zack "
    "Arlo Billy Colin Dean Ezra Frank Gus Hank Igor Jasper Kai Louis Milo Nico Otto Paul Ravi "
    "Seth Toby Umar Vince Walter Xavier Yusuf Zane Abel Brody Carl Dev Emil Ford Gary Hal Ian "
    "Jude Kurt Lars Marco Nate Omar Percy Rex Stan Ted Ugo Vic Wade Yuri Axel Bram Cody Duke "
    "Elliot Fritz Glen Harvey Ike Jonas Kit Lionel Mateo Neil Orson Pablo Rufus Silas Tobias "
    "Uri Vern Wally Yogi Zeke Andy Bobby Chris Dario Erik Fabio Gordon Hector Jamie Kenny"
).split()

PET_NAMES = (
    "Pip Bobo Fluffy Spot Buddy Coco Biscuit Pepper Peanut Muffin Sunny Patch Whiskers Bubbles "
    "Nibbles Ziggy Tiptoe Button Cookie Snowy Sparky Dotty Hoppy Fuzzy Pebble Bingo Rusty "
    "Socks Puddles Twinkle"
).split()

NAMES: frozenset[str] = frozenset(GIRL_NAMES + BOY_NAMES + PET_NAMES)

ANIMALS = (
    "cat dog bunny bear duck fox mouse bird frog lion puppy kitten owl pig cow horse turtle "
    "squirrel deer monkey sheep goat hen tiger elephant"
).split()

CHARACTER_ADJECTIVES = (
    "little small curious brave shy silly tiny young clever quiet playful cheerful busy happy"
).split()

PLACES = (
    "park forest garden farm beach lake meadow village town hill pond field zoo river woods "
    "valley playground backyard orchard"
).split()

SPOTS = [
    "big tree", "old bench", "green bush", "big rock", "fence", "slide", "old log",
    "flower bed", "wooden bridge", "tall grass", "little hill", "sandbox",
]

COLORS = "red blue green yellow pink purple orange shiny soft little big new".split()

TOYS = [
    "ball", "kite", "doll", "toy car", "teddy bear", "drum", "book", "hat", "toy boat",
    "blanket", "bike", "balloon", "box of crayons", "jar of marbles", "toy train",
    "wagon", "puzzle", "scarf",
]

FOODS = [
    "apple", "sandwich", "cookies", "cake", "bread", "carrots", "berries", "pie",
    "banana", "cheese", "muffin", "soup",
]

HOBBIES = [
    "play with {his} {toy}", "run in the {place}", "sing songs", "pick flowers",
    "look at the stars", "build with blocks", "splash in the puddles", "draw pictures",
    "climb trees", "read books", "dance in the sun", "watch the clouds",
    "jump in the leaves", "collect shiny stones", "play hide and seek", "ride {his} bike",
]

SCARY_THINGS = ["dark", "big storm", "loud thunder", "tall slide", "deep water", "strange noise"]
TRAPS = ["mud", "thorny bush", "tall tree", "deep hole", "fence", "pile of snow"]

# Words that mark kind acts and happy turns, and unkind acts and sad turns. The
# generator's kind and unkind templates are built around these words, and the
# kindness feature counts them, so the two agree by construction.
KIND_WORDS: frozenset[str] = frozenset(
    "help helped helping helps share shared sharing hug hugged gave give kind kindly gentle "
    "thank thanked thanks friend friends together smiled smile happy happily glad care cared "
    "comfort comforted fixed saved rescued warm love loved best proud welcome nice".split()
)
UNKIND_WORDS: frozenset[str] = frozenset(
    "push pushed grab grabbed yell yelled mean broke broken hit stole teased tease kicked "
    "cry cried crying sad alone lonely angry mad hurt ruined selfish rude laughed "
    "shouted ignored missed lost".split()
)
NEGATIONS: frozenset[str] = frozenset("not never no nobody didn't don't won't wouldn't".split())

# Last sentences that close a story: the proper-ending feature looks for these.
CLOSING_MARKERS = (
    "the end",
    "from that day on",
    "ever since",
    "happily ever after",
    "learned that",
    "never forgot",
    "never saw",
    "best friends",
    "for a long, long time",
    "went home",
    "and so",
    "all alone",
    "forever",
)

# ---------------------------------------------------------------------------
# Sentence templates. Slots: {N} main name, {he}/{He}/{him}/{his}/{His} its
# pronouns, {F} the friend and {fhe}/{Fhe}/{fhim}/{fhis}, {toy}, {ftoy}, {food},
# {place}, {spot}, {scary}, {trap}, {color}, {being}, {adj}, {fbeing}.
# ---------------------------------------------------------------------------

OPENINGS = [
    "Once upon a time, there was a {adj} {being} named {N}. {He} lived near the {place}.",
    "{N} was a {adj} {being} who lived near the {place}.",
    "One sunny day, {N} went to the {place} with {his} {color} {toy}.",
    "There once was a {adj} {being} called {N}. {He} loved to {hobby}.",
    "Once upon a time, a {being} named {N} lived in a little house by the {place}.",
    "{N} was a {adj} {being}. Every day, {he} liked to {hobby}.",
    "One morning, {N} woke up early. {He} wanted to go to the {place}.",
    "Once there was a {being} named {N} who loved {his} {color} {toy}.",
]

SETUPS = [
    "{He} had a {color} {toy} that {he} loved very much.",
    "Every day, {he} liked to {hobby}.",
    "{N} liked to {hobby} with {his} mom.",
    "{His} favorite thing was {his} {color} {toy}.",
    "{N} put on {his} {color} hat and went outside.",
    "{He} liked to {hobby} near the {spot}.",
    "{N} also liked to eat {food} for lunch.",
    "{His} mom always said, \"Be good and have fun.\"",
    "{N} had a little bag with {his} {toy} inside.",
    "{He} often played near the {spot}.",
]

OUTINGS = [
    "One day, {N} went to the {place} to {hobby}.",
    "After lunch, {N} walked to the {place}.",
    "{N} ran outside to play in the {place}.",
    "That afternoon, {N} took {his} {toy} to the {place}.",
]

SCENERY = [
    "The sun was warm and the sky was blue.",
    "Birds sang in the trees.",
    "The wind was soft and the grass was green.",
    "It was a nice day to play outside.",
    "There were many flowers near the {spot}.",
    "A little cloud moved slowly across the sky.",
    "The leaves were red and yellow.",
    "Butterflies flew over the {place}.",
    "A small stream ran past the {spot}.",
    "The air smelled of flowers and rain.",
    "Some ducks were swimming in the pond.",
    "The {place} was quiet and calm.",
]

MEETINGS = [
    "One day, {N} met a {fbeing} named {F}.",
    "At the {place}, {N} saw a {fbeing} named {F} near the {spot}.",
    "Then {N} saw a {fbeing} named {F} sitting by the {spot}.",
    "On the way, {N} met {F}, a {fbeing} who lived near the {place}.",
    "Soon, a {fbeing} named {F} came to the {place}.",
]

# Each problem: (the friend's trouble, the kind response, the unkind response).
PROBLEMS = [
    (
        "{F} was crying because {fhe} had lost {fhis} {ftoy}.",
        '{N} said, "Do not worry, I will help you." {He} looked under the {spot} and found the {ftoy}.',
        '{N} said, "That is not my problem." {He} walked away and did not help.',
    ),
    (
        "{F} was very hungry and had no food.",
        "{N} shared {his} {food} with {F}. They sat down and ate together.",
        '{N} ate all of {his} {food} and did not share. "Go away," {he} said.',
    ),
    (
        "{F} was stuck in the {trap} and could not get out.",
        "{N} wanted to help. {He} pulled and pulled until {F} was free.",
        "{N} laughed at {F} and ran off to play.",
    ),
    (
        '{F} asked, "Can I play with your {toy}?"',
        '{N} smiled and said, "Yes, let us play together!" {He} gave {F} a turn.',
        '{N} grabbed the {toy} and yelled, "No! It is mine!" {He} pushed {F} away.',
    ),
    (
        "{F} was new and did not have any friends.",
        "{N} said hello and gave {F} a big hug. {He} asked {F} to play.",
        "{N} teased {F} and would not let {fhim} play.",
    ),
    (
        "{F} was scared of the {scary}.",
        '{N} held {fhis} hand and said, "I will stay with you." {F} felt safe.',
        "{N} was mean to {F}. {He} said {F} was silly and left {fhim} alone.",
    ),
    (
        "{F} fell down and hurt {fhis} knee.",
        "{N} helped {fhim} up and gave {fhim} a gentle hug. {He} was very kind.",
        "{N} did not stop to help. {He} kicked a rock and ran home.",
    ),
    (
        "{F} was trying to fix {fhis} broken {ftoy}.",
        "{N} sat down next to {F}. Together they fixed the {ftoy}.",
        "{N} grabbed the {ftoy} and threw it in the {trap}. It broke even more.",
    ),
]

KIND_TURNS = [
    '{F} smiled. "Thank you, {N}! You are a good friend," {fhe} said.',
    "{F} was so happy. {Fhe} gave {N} a big hug.",
    '"Thank you!" said {F}. {N} felt warm and happy inside.',
    "{F} jumped up and down with joy. {N} was glad {he} could help.",
]

HAPPY_MORE = [
    "They played together until the sun went down.",
    "They laughed and ran all around the {place}.",
    "They shared the {toy} and took turns.",
    "Then they ate {food} under the {spot}.",
    "The two friends had a wonderful day.",
    "They sang songs and danced in the sun.",
    "{F} showed {N} how to play a new game.",
    "Everyone at the {place} smiled when they saw the two friends.",
    "{N}'s mom was proud of {him}.",
]

UNKIND_TURNS = [
    "{F} began to cry. {Fhe} walked home, sad and alone.",
    "{F} was very sad. {Fhe} sat by the {spot} and cried.",
    "{F} looked at {N} with tears in {fhis} eyes and walked away.",
    "{F} was hurt and angry. {Fhe} did not want to see {N} again.",
]

SAD_MORE = [
    "Later, {N} wanted to play, but nobody wanted to play with {him}.",
    "Then dark clouds came and it began to rain. {N}'s {toy} was broken in the mud.",
    "{N} sat alone on the {spot}. {He} felt sad and lonely.",
    "The sky turned gray and the wind was cold.",
    "{N} lost {his} {toy} on the way home.",
    "The other children did not want to play with {N} anymore.",
    "{N} tried to play alone, but it was no fun.",
    "When {N} got home, {his} mom was not happy with {him}.",
]

# Sad turns that need nobody to be unkind: bad luck happens.
MISFORTUNES = [
    "Suddenly, {N}'s {toy} fell into the river and floated away.",
    "A big storm came and broke {N}'s {toy}.",
    '{F} said, "I have to move to a new town far away." {N} was very sad.',
    "Then {N} fell and hurt {his} knee. It hurt a lot.",
    "{N} looked for {his} {toy} everywhere, but it was gone.",
]
MISFORTUNE_MORE = [
    "{He} looked and looked, but {he} could not find it.",
    "{N} cried all night.",
    "Nobody came to help {him}.",
    "{N} sat alone and cried.",
    "The day was ruined.",
    "{N} tried to smile, but {he} could not.",
    "The rain kept falling all day long.",
]

KIND_CLOSINGS = [
    "From that day on, {N} and {F} were best friends.",
    "{N} learned that being kind makes everyone happy.",
    "And they lived happily ever after.",
    "{N} went home with a big smile on {his} face.",
    "Ever since then, {N} always helped {his} friends.",
]
UNKIND_CLOSINGS = [
    "From that day on, {N} played all alone.",
    "{N} went home sad, and {his} {toy} stayed broken.",
    "{N} never saw {F} again.",
    "And {N} was sad for a long, long time.",
]
SAD_CLOSINGS = [
    "{N} never saw {his} {toy} again.",
    "From that day on, {N} was sad and missed {his} {toy}.",
    "And {N} was sad for a long, long time.",
    "{N} went home alone and sad.",
]

DRIFTS = [
    "Far away, there lived a {adj} {being} named {N}.",
    "Meanwhile, a {being} named {N} was playing near the {place}.",
    "In another town, there was a {adj} {being} called {N}.",
]

ALL_TEMPLATES = (
    OPENINGS + SETUPS + OUTINGS + SCENERY + MEETINGS + [t for p in PROBLEMS for t in p] + KIND_TURNS
    + HAPPY_MORE + UNKIND_TURNS + SAD_MORE + MISFORTUNES + MISFORTUNE_MORE + KIND_CLOSINGS
    + UNKIND_CLOSINGS + SAD_CLOSINGS + DRIFTS + HOBBIES + ["The end."]
)


def _lowercase_vocabulary() -> frozenset[str]:
    words: set[str] = set()
    for template in ALL_TEMPLATES:
        words.update(w.lower() for w in re.findall(r"[A-Za-z']+", re.sub(r"\{\w+\}", " ", template)))
    for group in (ANIMALS, CHARACTER_ADJECTIVES, PLACES, SPOTS, COLORS, TOYS, FOODS, SCARY_THINGS, TRAPS):
        for item in group:
            words.update(item.lower().split())
    words.update("he she him her his hers they them their it its girl boy".split())
    return frozenset(words)


# Every ordinary (non-name) word the generator can write, lower-cased. The
# character-consistency feature uses it to tell a name from a capitalised word.
COMMON_WORDS: frozenset[str] = _lowercase_vocabulary()

# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class Story:
    """One generated story, split into the opening (the prompt) and the rest."""

    opening: str
    continuation: str
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.opening + " " + self.continuation


_PRONOUNS = {
    "f": {"he": "she", "He": "She", "him": "her", "his": "her", "His": "Her"},
    "m": {"he": "he", "He": "He", "him": "him", "his": "his", "His": "His"},
}


def _character(rng: random.Random, avoid: set[str]) -> dict[str, str]:
    """A named character with its pronouns: a child (60%) or an animal, named unlike anyone in `avoid`."""
    gender = rng.choice("fm")
    if rng.random() < 0.6:
        being = "girl" if gender == "f" else "boy"
        pool = GIRL_NAMES if gender == "f" else BOY_NAMES
    else:
        being = rng.choice(ANIMALS)
        pool = PET_NAMES if rng.random() < 0.3 else (GIRL_NAMES if gender == "f" else BOY_NAMES)
    name = rng.choice(pool)
    while name in avoid:
        name = rng.choice(pool)
    avoid.add(name)
    return {"name": name, "being": being, **_PRONOUNS[gender]}


def _slots(rng: random.Random, main: dict[str, str], friend: dict[str, str]) -> dict[str, str]:
    slots = {
        "N": main["name"], "being": main["being"], "he": main["he"], "He": main["He"],
        "him": main["him"], "his": main["his"], "His": main["His"],
        "F": friend["name"], "fbeing": friend["being"], "fhe": friend["he"], "Fhe": friend["He"],
        "fhim": friend["him"], "fhis": friend["his"],
        "adj": rng.choice(CHARACTER_ADJECTIVES), "place": rng.choice(PLACES),
        "spot": rng.choice(SPOTS), "color": rng.choice(COLORS), "toy": rng.choice(TOYS),
        "ftoy": rng.choice(TOYS), "food": rng.choice(FOODS), "scary": rng.choice(SCARY_THINGS),
        "trap": rng.choice(TRAPS),
    }
    slots["hobby"] = rng.choice(HOBBIES).format(**slots)
    return slots


def _fill(rng: random.Random, templates: list[str], slots: dict[str, str]) -> str:
    return rng.choice(templates).format(**slots)


def _episode(rng: random.Random, slots: dict[str, str], tone: str, ending: bool, scenery: list[str]) -> list[str]:
    """Meeting, problem, response and consequence, then the closing line when `ending`.

    `scenery` holds the scenery sentences this story has not used yet.
    """
    out = [_fill(rng, OUTINGS, slots)] if rng.random() < 0.6 else []
    out += [_fill(rng, MEETINGS, slots)]
    out += [scenery.pop().format(**slots) for _ in range(rng.randint(0, 2))]
    problem = rng.choice(PROBLEMS)
    if tone == "sad":
        out.append(_fill(rng, MISFORTUNES, slots))
        out += [m.format(**slots) for m in rng.sample(MISFORTUNE_MORE, rng.randint(2, 3))]
        closings = SAD_CLOSINGS
    elif tone == "kind":
        out.append(problem[0].format(**slots))
        out.append(problem[1].format(**slots))
        out.append(_fill(rng, KIND_TURNS, slots))
        out += [m.format(**slots) for m in rng.sample(HAPPY_MORE, rng.randint(1, 3))]
        closings = KIND_CLOSINGS
    else:
        out.append(problem[0].format(**slots))
        out.append(problem[2].format(**slots))
        out.append(_fill(rng, UNKIND_TURNS, slots))
        out += [m.format(**slots) for m in rng.sample(SAD_MORE, rng.randint(1, 3))]
        closings = UNKIND_CLOSINGS
    if ending:
        out.append(_fill(rng, closings, slots))
        if rng.random() < 0.6:
            out.append("The end.")
    return out


def _truncate(rng: random.Random, sentences: list[str]) -> tuple[list[str], bool]:
    """An ending-less story: stop after a middle sentence, or cut the last one mid-way."""
    if rng.random() < 0.5:
        return sentences, False
    words = sentences[-1].split()
    keep = max(1, len(words) - rng.randint(2, max(2, len(words) - 1)))
    cut = " ".join(words[:keep]).rstrip(".,!?\"")
    return sentences[:-1] + [cut], True


def _plan(rng: random.Random) -> tuple[dict[str, str], dict[str, str], str, set[str]]:
    """The main character, the slot values (friend included), the opening, and the names taken."""
    used: set[str] = set()
    main = _character(rng, used)
    friend = _character(rng, used)
    slots = _slots(rng, main, friend)
    return main, slots, _fill(rng, OPENINGS, slots), used


def _continue(rng: random.Random, main: dict[str, str], slots: dict[str, str], used: set[str]) -> tuple[str, dict]:
    """One continuation of an opening, drawing its own tone, drift and ending."""
    roll = rng.random()
    tone = "kind" if roll < 0.5 else ("unkind" if roll < 0.8 else "sad")
    drift = rng.random() < 0.2
    ending = rng.random() < 0.85

    body = [m.format(**slots) for m in rng.sample(SETUPS, rng.randint(1, 2))]
    scenery = rng.sample(SCENERY, 3)
    body += [scenery.pop().format(**slots) for _ in range(rng.randint(0, 1))]
    focus, episode_slots = main, slots
    if drift:
        # The story forgets its main character: a new one takes over for good.
        taken = set(used)
        focus = _character(rng, taken)
        episode_slots = _slots(rng, focus, _character(rng, taken))
        body.append(_fill(rng, DRIFTS, episode_slots))
    body += _episode(rng, episode_slots, tone, ending, scenery)
    truncated = False
    if not ending:
        body, truncated = _truncate(rng, body)
    meta = {
        "main": main["name"],
        "friend": episode_slots["F"],
        "focus": focus["name"],
        "tone": tone,
        "kind": tone == "kind",
        "drift": drift,
        "ending": ending,
        "truncated": truncated,
        "good": tone == "kind" and not drift and ending,
    }
    return " ".join(body), meta


def _story(rng: random.Random) -> Story:
    main, slots, opening, used = _plan(rng)
    continuation, meta = _continue(rng, main, slots, used)
    return Story(opening=opening, continuation=continuation, meta=meta)


def _stream(seed: int, name: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"alignloop-stories:{seed}:{name}")


def generate_stories(n: int, seed: int = 0) -> list[Story]:
    """`n` stories, the same ones for the same `seed`.

    About half are kind with a happy resolution, 30% unkind, 20% a sad turn of
    luck; 20% drift to a new character; 85% end with a closing line, and the
    rest stop early (half of those mid-sentence). `meta` records each choice.
    """
    if n < 1:
        raise DataError(f"number of stories must be at least 1, got {n}")
    rng = _stream(seed, "corpus")
    return [_story(rng) for _ in range(n)]


def generate_openings(n: int, seed: int = 0, stream: str = "prompts") -> list[str]:
    """`n` story openings (prompts) from their own random stream, so not copies of corpus stories."""
    if n < 1:
        raise DataError(f"number of openings must be at least 1, got {n}")
    rng = _stream(seed, stream)
    return [_story(rng).opening for _ in range(n)]


def generate_comparisons(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` triples (prompt, response_a, response_b): two independent continuations of one opening.

    Each continuation draws its own tone, drift and ending, so pairs differ in the
    ways the judges care about; useful to test judges and reward models without a model.
    """
    if n < 1:
        raise DataError(f"number of comparisons must be at least 1, got {n}")
    rng = _stream(seed, "comparisons")
    out = []
    for _ in range(n):
        main, slots, opening, used = _plan(rng)
        first, _ = _continue(rng, main, slots, used)
        second = first
        while second == first:
            second, _ = _continue(rng, main, slots, used)
        out.append((opening, first, second))
    return out


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_builtin_data(out: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Write the built-in corpus and its prompt sets next to `out`.

    - `out`: `n` stories as plain text, one per blank-line-separated block;
    - `<stem>.prompts.jsonl`: max(200, n // 10) openings `{"prompt": ...}` from
      their own seed stream (for sampling and RL);
    - `<stem>.eval_prompts.jsonl`: 200 held-out openings from a third stream;
    - `<stem>.sft.jsonl`: `{"prompt", "response"}` for the kind, on-character,
      properly ended stories only, so SFT shows the wanted behaviour.

    Returns the paths under keys "corpus", "prompts", "eval_prompts", "sft".
    """
    if n < 1:
        raise DataError(f"number of stories must be at least 1, got {n}")
    out = Path(out)
    stories = generate_stories(n, seed)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    paths = {
        "corpus": out,
        "prompts": out.with_name(f"{stem}.prompts.jsonl"),
        "eval_prompts": out.with_name(f"{stem}.eval_prompts.jsonl"),
        "sft": out.with_name(f"{stem}.sft.jsonl"),
    }
    atomic.write_text(paths["corpus"], "\n\n".join(s.text for s in stories) + "\n")
    prompts = generate_openings(max(200, n // 10), seed, stream="prompts")
    atomic.write_text(paths["prompts"], _jsonl([{"prompt": p} for p in prompts]))
    eval_prompts = generate_openings(200, seed, stream="eval_prompts")
    atomic.write_text(paths["eval_prompts"], _jsonl([{"prompt": p} for p in eval_prompts]))
    sft = [{"prompt": s.opening, "response": s.continuation} for s in stories if s.meta["good"]]
    atomic.write_text(paths["sft"], _jsonl(sft))
    return paths
