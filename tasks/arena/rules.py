"""The arena: the built-in synthetic task whose preference can be checked exactly.

A prompt asks about one topic ("Tell me about otters."). A response is scored by `gold_score`, a fixed,
documented rule on its lower-cased words:

    +2  if the topic word occurs
    +1  per distinct polite word (please, thanks, glad, happy, kindly, welcome) present, at most +2
    -1  per position whose word equals the word right before it ("the the" is -1, "the the the" is -2)
    -1  if the response has fewer than 5 or more than 40 words

so the best possible score is 4. The gold win rate of policy B against policy A is the mean over held-out
prompts of `gold_preference(topic, b, a)` (ties count one half).

This module also holds the pretraining corpus of the arena policy (`corpus_response`): responses that
satisfy each gold term only some of the time, so the pretrained policy has real headroom that a preference
loop can learn. The corpus never mentions a topic other than the prompt's. It also holds judge-format
examples (`corpus_judge_example`: a question, two corpus responses A and B, and the noisy gold verdict
" A" / " B"), so the policy can judge its own samples (self-preference, OSP).

It knows the prompts, the gold rule and the corpus; it knows nothing about tokenizers, torch, models or
the wire. Everything is deterministic: the prompt split uses a fixed
internal seed that no run seed changes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sparring.shared.stats import WinRate, win_rate
from sparring.workers.judges.self_preference import DEFAULT_ANSWERS, DEFAULT_TEMPLATE

POLITE_WORDS: frozenset[str] = frozenset({"please", "thanks", "glad", "happy", "kindly", "welcome"})
POLITE_CAP = 2  # at most +2 from polite words
TOPIC_BONUS = 2
MIN_WORDS = 5
MAX_WORDS = 40
MAX_GOLD = TOPIC_BONUS + POLITE_CAP

TOPICS: tuple[str, ...] = (
    # animals
    "otters", "foxes", "owls", "wolves", "bears", "tigers", "lions", "horses", "rabbits", "turtles",
    "dolphins", "whales", "sharks", "eagles", "parrots", "penguins", "camels", "zebras", "beetles", "spiders",
    "frogs", "snakes", "bees", "squirrels",
    # foods
    "apples", "bananas", "lemons", "cherries", "grapes", "carrots", "potatoes", "tomatoes", "onions", "bread",
    "cheese", "rice", "noodles", "soup", "honey", "coffee", "tea", "chocolate", "cookies", "pancakes",
    "mushrooms", "peppers", "olives", "butter",
    # places
    "mountains", "rivers", "islands", "deserts", "forests", "beaches", "volcanoes", "caves", "lakes",
    "castles", "bridges", "libraries", "museums", "gardens", "farms", "harbors", "villages", "glaciers",
    "canyons", "meadows", "jungles", "lighthouses", "markets", "temples",
    # objects
    "lamps", "clocks", "mirrors", "umbrellas", "kettles", "pianos", "violins", "bicycles", "boats", "trains",
    "rockets", "candles", "keys", "hammers", "ladders", "pencils", "maps", "kites", "telescopes", "compasses",
    "blankets", "chairs", "wheels", "bottles",
)  # fmt: skip

TEMPLATES: tuple[str, ...] = (
    "Tell me about {topic}.",
    "What do you know about {topic}?",
    "Describe {topic}.",
    "Can you explain {topic}?",
    "Write a few words about {topic}.",
    "I want to learn about {topic}.",
    "Give me some facts about {topic}.",
    "What is interesting about {topic}?",
    "Say something about {topic}.",
    "Share your thoughts on {topic}.",
)

_SPLIT_SEED = 20240611  # fixed: the prompt split never depends on a run's seed
NUM_HELDOUT = 320  # of len(TOPICS) * len(TEMPLATES) = 960 prompts; the other 640 are the train split

_WORD_RE = re.compile(r"[a-z0-9]+")
_TEMPLATE_RES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(re.escape(t).replace(re.escape("{topic}"), "([a-z]+)")) for t in TEMPLATES
)
_TOPIC_SET = frozenset(TOPICS)


@dataclass(frozen=True)
class ArenaPrompt:
    """One arena prompt: `prompt_id` is `arena-t{template index}-{topic}`."""

    prompt_id: str
    prompt: str
    topic: str


def arena_prompts(split: Literal["train", "heldout"]) -> list[ArenaPrompt]:
    """The train (640) or held-out (320) prompts; disjoint, in a fixed shuffled order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    everything = [
        ArenaPrompt(prompt_id=f"arena-t{t}-{topic}", prompt=template.format(topic=topic), topic=topic)
        for t, template in enumerate(TEMPLATES)
        for topic in TOPICS
    ]
    random.Random(_SPLIT_SEED).shuffle(everything)
    return everything[:NUM_HELDOUT] if split == "heldout" else everything[NUM_HELDOUT:]


def topic_of(prompt: str) -> str:
    """The topic of an arena prompt text; ValueError if the text is not an arena prompt."""
    text = prompt.strip()
    for pattern in _TEMPLATE_RES:
        m = pattern.fullmatch(text)
        if m is not None and m.group(1) in _TOPIC_SET:
            return m.group(1)
    raise ValueError(f"not an arena prompt (no template and topic match): {prompt!r}")


def words(text: str) -> list[str]:
    """The lower-cased alphanumeric words of `text` (what the gold rule sees)."""
    return _WORD_RE.findall(text.lower())


@dataclass(frozen=True)
class GoldTerms:
    """The four terms of `gold_score`, each already signed; `total` is their sum."""

    topic: int  # 0 or +2
    polite: int  # 0..+2
    repeats: int  # 0, -1, -2, ...
    length: int  # 0 or -1
    num_words: int

    @property
    def total(self) -> int:
        return self.topic + self.polite + self.repeats + self.length


def gold_terms(topic: str, response: str) -> GoldTerms:
    """Each term of the gold rule for one response (see the module docstring)."""
    ws = words(response)
    return GoldTerms(
        topic=TOPIC_BONUS if topic.lower() in ws else 0,
        polite=min(len(POLITE_WORDS.intersection(ws)), POLITE_CAP),
        repeats=-sum(1 for i in range(1, len(ws)) if ws[i] == ws[i - 1]),
        length=0 if MIN_WORDS <= len(ws) <= MAX_WORDS else -1,
        num_words=len(ws),
    )


def gold_score(topic: str, response: str) -> int:
    """The arena's gold score of `response` to a prompt about `topic`; higher is better, at most 4."""
    return gold_terms(topic, response).total


def gold_preference(topic: str, a: str, b: str) -> float:
    """P(a beats b) under the gold rule: 1.0, 0.0, or 0.5 on a tie."""
    sa, sb = gold_score(topic, a), gold_score(topic, b)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def gold_win_rate(topics: Sequence[str], responses_b: Sequence[str], responses_a: Sequence[str]) -> WinRate:
    """Gold win rate of policy B against policy A, one response of each per prompt:
    mean_i gold_preference(topic_i, b_i, a_i) with the normal 95% interval (`shared/stats.py::win_rate`)."""
    n = len(topics)
    if len(responses_b) != n or len(responses_a) != n:
        raise ValueError(
            f"lengths differ: {n} topics, {len(responses_b)} responses_b, {len(responses_a)} responses_a"
        )
    return win_rate([gold_preference(t, b, a) for t, b, a in zip(topics, responses_b, responses_a, strict=True)])


def arena_stats(topics: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """How often a set of responses satisfies each gold term (fractions in [0, 1]) and their mean gold.

    Keys: `gold/mean`, `topic` (topic word present), `polite_any` (>= 1 polite word), `polite_full`
    (>= 2 distinct polite words, the full +2), `no_repeat`, `length_ok` (5..40 words), `words/mean`.
    """
    if len(topics) != len(responses) or not topics:
        raise ValueError(f"need equally many topics and responses, got {len(topics)} and {len(responses)}")
    terms = [gold_terms(t, r) for t, r in zip(topics, responses, strict=True)]
    n = len(terms)
    return {
        "gold/mean": sum(g.total for g in terms) / n,
        "topic": sum(g.topic > 0 for g in terms) / n,
        "polite_any": sum(g.polite >= 1 for g in terms) / n,
        "polite_full": sum(g.polite >= POLITE_CAP for g in terms) / n,
        "no_repeat": sum(g.repeats == 0 for g in terms) / n,
        "length_ok": sum(g.length == 0 for g in terms) / n,
        "words/mean": sum(g.num_words for g in terms) / n,
    }


# --------------------------------------------------------------------------------------------------
# Pretraining corpus of the arena policy
#
# Each gold term is decided independently per response, so the pretrained policy does each of them
# "sometimes" and a preference loop can push every one further: copy the topic from the prompt (instead of
# saying "it"), say more polite phrases, stop stuttering, stop at a sensible length.

P_TOPIC = 0.55  # response names the topic (otherwise it only says "it", "this", ...)
POLITE_COUNT_PROBS = (0.3, 0.35, 0.22, 0.13)  # P(0, 1, 2, 3 distinct polite phrases)
P_REPEAT = 0.3  # response contains an immediate repeat ("is is"); a third of those contain two
P_SHORT = 0.08  # fewer than 5 words
P_LONG = 0.03  # more than 40 words (rare: at ~1.2 tokens a word it nears the 48-token sampling budget)

# A slot "{x}" takes the topic or a stand-in for it.
STAND_INS = ("it", "this", "that subject", "the subject")
CONTENT_SENTENCES = (
    "people often talk about {x}.",
    "there is a lot to say about {x}.",
    "many stories mention {x}.",
    "you can learn more about {x} in a good guide.",
    "some experts study {x} every day.",
    "a friend of mine once asked about {x}.",
    "most children find {x} fun.",
    "the best part of {x} is the detail.",
    "i think about {x} quite a lot.",
    "it is a common question.",
    "the answer depends on many things.",
    "there are many details to explore.",
    "here is a short answer.",
    "some facts are surprising.",
    "the history is long and rich.",
    "many people have strong opinions.",
    "it can be simple or complex.",
    "a short summary helps.",
    "there is always more to find out.",
    "the first thing to know is simple.",
)
POLITE_PHRASES = {
    "glad": "glad you asked.",
    "happy": "happy to help.",
    "thanks": "thanks for the question.",
    "welcome": "you are welcome to ask more.",
    "please": "please ask again anytime.",
    "kindly": "kindly note the details.",
}
SHORT_FILLERS = ("good question.", "i see.", "not sure.", "hard to say.", "well.", "ok.")


def _fill(sentence: str, x: str) -> str:
    return sentence.format(x=x) if "{x}" in sentence else sentence


def _stutter(text: str, rng: random.Random, count: int) -> str:
    """Duplicate `count` distinct words in place ("is" -> "is is"), at positions not next to each other."""
    tokens = text.split(" ")
    picks = rng.sample(range(len(tokens)), k=min(count, len(tokens)))
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i in picks:
            bare = tok.rstrip(".,")
            out.append(bare if bare else tok)
        out.append(tok)
    return " ".join(out)


def _draw(topic: str, rng: random.Random) -> tuple[str, bool, int, int, str]:
    """One candidate response and the features it was drawn with (topic?, polite count, repeats, length)."""
    mention = rng.random() < P_TOPIC
    polite = rng.choices(range(len(POLITE_COUNT_PROBS)), weights=POLITE_COUNT_PROBS)[0]
    repeats = 0 if rng.random() >= P_REPEAT else (1 if rng.random() < 2 / 3 else 2)
    u = rng.random()
    length = "short" if u < P_SHORT else "long" if u < P_SHORT + P_LONG else "ok"
    phrases = [POLITE_PHRASES[w] for w in rng.sample(sorted(POLITE_PHRASES), k=polite)]
    if length == "short":
        # the topic never opens a response: there it would be a different BPE token (no leading space)
        # from the prompt's " otters", which makes copying it much harder for a tiny model
        parts = [f"about {topic}." if mention else rng.choice(SHORT_FILLERS)]
        parts += [p.split(" ")[0].rstrip(".") + "." for p in phrases]  # "glad.", "thanks."
        rng.shuffle(parts)
    else:
        n_content = rng.randint(2, 4) if length == "ok" else rng.randint(7, 9)
        content = rng.sample(CONTENT_SENTENCES, k=n_content)
        slots = [i for i, s in enumerate(content) if "{x}" in s]
        if mention and not slots:  # make room for the topic
            content[0] = CONTENT_SENTENCES[0]
            slots = [0]
        topic_slot = rng.choice(slots) if mention else -1
        filled = [
            _fill(s, topic if i == topic_slot or (mention and rng.random() < 0.3) else rng.choice(STAND_INS))
            for i, s in enumerate(content)
        ]
        parts = filled
        for p in phrases:  # polite phrases open or close the answer
            if rng.random() < 0.5:
                parts.insert(0, p)
            else:
                parts.append(p)
    text = " ".join(parts)
    if repeats:
        text = _stutter(text, rng, repeats)
    return text, mention, polite, repeats, length


def corpus_response(topic: str, rng: random.Random) -> str:
    """One pretraining response to a prompt about `topic`, each gold term drawn independently.

    A drawn response is kept only if its gold terms are the ones it was drawn with (no accidental repeat
    across a sentence boundary, the length class holds); otherwise all features are drawn again. The
    corpus frequencies are therefore close to, not exactly, the `P_*` constants above.
    """
    while True:
        text, mention, polite, repeats, length = _draw(topic, rng)
        g = gold_terms(topic, text)
        length_class = "short" if g.num_words < MIN_WORDS else "long" if g.num_words > MAX_WORDS else "ok"
        if (
            (g.topic > 0) == mention
            and g.polite == min(polite, POLITE_CAP)
            and len(POLITE_WORDS.intersection(words(text))) == polite
            and -g.repeats == repeats
            and length_class == length
        ):
            return text


# --------------------------------------------------------------------------------------------------
# Judge-format examples: the arena policy also learns to judge its own kind of answer (self-preference,
# OSP). A judge prompt shows a question and two responses; the answer is " A" or " B", the gold verdict
# with label noise. The self-preference judge (`workers/judges/self_preference.py`) reads P(" A") and
# P(" B") after exactly this prompt.

# the self-preference judge's default prompt (workers/judges/self_preference.py), taught to the arena policy
JUDGE_TEMPLATE = DEFAULT_TEMPLATE
JUDGE_ANSWERS = DEFAULT_ANSWERS  # each one token of the arena tokenizer (the build checks it)
JUDGE_LABEL_NOISE = 0.1  # probability that a corpus verdict is flipped


def judge_prompt(question: str, a: str, b: str) -> str:
    """The judge prompt (a user message) asking whether response `a` or `b` answers `question` better."""
    return JUDGE_TEMPLATE.format(question=question, a=a, b=b)


def corpus_judge_example(prompt: ArenaPrompt, rng: random.Random) -> tuple[str, str]:
    """(judge prompt, answer) on two independent corpus responses to `prompt`.

    The answer names the response with the higher gold score, flipped with probability `JUDGE_LABEL_NOISE`;
    a gold tie is a fair coin. Which response comes first is random, so the corpus has no position bias.
    """
    a = corpus_response(prompt.topic, rng)
    b = corpus_response(prompt.topic, rng)
    pref = gold_preference(prompt.topic, a, b)
    a_wins = rng.random() < 0.5 if pref == 0.5 else pref == 1.0
    if rng.random() < JUDGE_LABEL_NOISE:
        a_wins = not a_wins
    return judge_prompt(prompt.prompt, a, b), JUDGE_ANSWERS[0 if a_wins else 1]
