"""Write the three small tasks of the forgetting benchmark as ShareGPT JSONL files.

    python bench/make_data.py          # writes bench/data/{arithmetic,french,capitals,short_chat,long_chat}.jsonl

The tasks have clearly different content, so training on one and then the next shows
how much of the first a model keeps: arithmetic answered in words, French→English word
translation, and capital cities. 80 examples each; the output is deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PER_TASK = 80
DATA = Path(__file__).parent / "data"

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]

FRENCH = [
    ("chien", "dog"), ("chat", "cat"), ("maison", "house"), ("arbre", "tree"), ("livre", "book"),
    ("pomme", "apple"), ("eau", "water"), ("pain", "bread"), ("fromage", "cheese"), ("lait", "milk"),
    ("voiture", "car"), ("fenêtre", "window"), ("porte", "door"), ("soleil", "sun"), ("lune", "moon"),
    ("étoile", "star"), ("mer", "sea"), ("montagne", "mountain"), ("rivière", "river"), ("fleur", "flower"),
    ("oiseau", "bird"), ("poisson", "fish"), ("cheval", "horse"), ("vache", "cow"), ("cochon", "pig"),
    ("mouton", "sheep"), ("souris", "mouse"), ("lapin", "rabbit"), ("ours", "bear"), ("loup", "wolf"),
    ("table", "table"), ("chaise", "chair"), ("lit", "bed"), ("cuillère", "spoon"), ("couteau", "knife"),
    ("fourchette", "fork"), ("assiette", "plate"), ("verre", "glass"), ("tasse", "cup"), ("bouteille", "bottle"),
    ("école", "school"), ("église", "church"), ("jardin", "garden"), ("rue", "street"), ("ville", "town"),
    ("pays", "country"), ("monde", "world"), ("ciel", "sky"), ("nuage", "cloud"), ("pluie", "rain"),
    ("neige", "snow"), ("vent", "wind"), ("feu", "fire"), ("terre", "earth"), ("pierre", "stone"),
    ("sable", "sand"), ("bois", "wood"), ("fer", "iron"), ("or", "gold"), ("argent", "silver"),
    ("rouge", "red"), ("vert", "green"), ("bleu", "blue"), ("jaune", "yellow"), ("noir", "black"),
    ("blanc", "white"), ("grand", "big"), ("petit", "small"), ("chaud", "hot"), ("froid", "cold"),
    ("jour", "day"), ("nuit", "night"), ("matin", "morning"), ("soir", "evening"), ("semaine", "week"),
    ("année", "year"), ("main", "hand"), ("pied", "foot"), ("tête", "head"), ("coeur", "heart"),
]

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Denmark", "Copenhagen"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Iceland", "Reykjavik"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Czechia", "Prague"),
    ("Hungary", "Budapest"), ("Greece", "Athens"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"), ("Russia", "Moscow"),
    ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Morocco", "Rabat"), ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Senegal", "Dakar"),
    ("Tanzania", "Dodoma"), ("Uganda", "Kampala"), ("Zimbabwe", "Harare"), ("Angola", "Luanda"),
    ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Libya", "Tripoli"), ("Sudan", "Khartoum"),
    ("China", "Beijing"), ("Japan", "Tokyo"), ("South Korea", "Seoul"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Jordan", "Amman"),
    ("Lebanon", "Beirut"), ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"), ("Afghanistan", "Kabul"),
    ("Mongolia", "Ulaanbaatar"), ("Kazakhstan", "Astana"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"), ("United States", "Washington"), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Jamaica", "Kingston"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Ecuador", "Quito"),
    ("Peru", "Lima"), ("Bolivia", "Sucre"), ("Chile", "Santiago"), ("Argentina", "Buenos Aires"),
    ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"), ("Brazil", "Brasilia"), ("Panama", "Panama City"),
]


def record(question: str, answer: str) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def arithmetic(n: int, seed: int = 0) -> list[dict]:
    """Sums and differences of numbers up to ten, answered as a word ("Twelve.")."""
    problems = [(a, "plus", b, a + b) for a in range(1, 11) for b in range(1, 11)]
    problems += [(a, "minus", b, a - b) for a in range(2, 11) for b in range(1, a)]
    picked = random.Random(seed).sample(problems, n)
    return [record(f"What is {NUMBER_WORDS[a]} {op} {NUMBER_WORDS[b]}? Answer in words.",
                   f"{NUMBER_WORDS[result].capitalize()}.") for a, op, b, result in picked]


def french(n: int) -> list[dict]:
    return [record(f"Translate the French word '{fr}' into English.", f"{en.capitalize()}.")
            for fr, en in FRENCH[:n]]


def capitals(n: int) -> list[dict]:
    return [record(f"What is the capital of {country}?", f"{city}.") for country, city in CAPITALS[:n]]


SHORT_CHAT = 800
PHRASINGS = ("{q}", "Quick question: {q}", "Could you tell me this? {q}")


def short_chat(n: int = SHORT_CHAT, seed: int = 0) -> list[dict]:
    """Many short Q&A pairs (~50 tokens each with a chat template), the data most people
    fine-tune on: every task's questions in three phrasings, shuffled. For the speed
    benchmark (`bench/throughput.py --data bench/data/short_chat.jsonl`)."""
    base = arithmetic(145) + french(len(FRENCH)) + capitals(len(CAPITALS))
    rows = [record(p.format(q=r["conversations"][0]["value"]), r["conversations"][1]["value"])
            for r in base for p in PHRASINGS]
    random.Random(seed).shuffle(rows)
    return rows[:n]


LONG_CHAT = 200


def long_chat(n: int = LONG_CHAT, seed: int = 1) -> list[dict]:
    """Longer conversations (~300-450 tokens each with a chat template): 10 to 14 of the
    short Q&A pairs asked in one conversation, every answer trained on. The long shape of
    the speed benchmark (`--data bench/data/long_chat.jsonl --seq-len 512`)."""
    pairs = [r["conversations"] for r in short_chat(seed=seed)]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = [turn for pair in rng.sample(pairs, rng.randint(10, 14)) for turn in pair]
        rows.append({"conversations": turns})
    return rows


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, rows in (("short_chat", short_chat()), ("long_chat", long_chat())):
        path = DATA / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} examples")
    for name, rows in (("arithmetic", arithmetic(PER_TASK)), ("french", french(PER_TASK)),
                       ("capitals", capitals(PER_TASK))):
        assert len(rows) == PER_TASK, (name, len(rows))
        path = DATA / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} examples")


if __name__ == "__main__":
    main()
