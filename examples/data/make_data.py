"""Build the small example data sets in this folder from hand-written phrase lists.

    python examples/data/make_data.py

sentiment/{en,de}/{train,dev}.tsv   product and film reviews, positive / negative.
    Single clauses, clauses joined by "and", contrasts ("…, but …", "Although …, …") where
    the second clause decides, and negated phrases ("not bad at all"), so that counting
    positive and negative words is not enough.
pairs/{en,fr}/{train,dev}.tsv       premise / hypothesis: entailment, neutral, contradiction.
    Premises describe one small event (a purchase, a train journey, a run). Hypotheses
    restate part of it, contradict it, or add something it does not say. Half of them are
    probes whose label depends on whether a day, a name, a number or an hour matches the
    premise ("Maria was at the market on Monday" is entailed or neutral), so the hypothesis
    alone does not give the label away.

Output is deterministic (fixed seeds); dev sentences never occur in train.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"train": 300, "dev": 60}

# --------------------------------------------------------------------------- sentiment
# English predicates are plain strings; German ones are (finite verb, rest) so that a clause
# can be written in main order ("der Akku ist schwach"), subordinate order ("… schwach ist")
# or inverted order ("ist der Akku schwach").

SENTIMENT = {
    "en": {
        # aspects any item of the domain has; items add their own
        "aspects": {
            "product": ["the price", "the delivery", "the customer service", "the design", "the build quality",
                        "the manual", "the packaging"],
            "film": ["the plot", "the acting", "the soundtrack", "the ending", "the dialogue", "the script",
                     "the pacing", "the main character", "the cinematography", "the humour"],
        },
        "items": {
            "product": {"this phone": ["the battery", "the screen", "the camera", "the speaker"],
                        "this laptop": ["the battery", "the screen", "the keyboard", "the touchpad"],
                        "this blender": ["the motor", "the lid", "the jug"],
                        "this vacuum cleaner": ["the suction", "the battery", "the filter"],
                        "this kettle": ["the handle", "the lid", "the limescale filter"],
                        "this coffee machine": ["the milk frother", "the water tank", "the coffee"],
                        "this toaster": ["the browning control", "the crumb tray"],
                        "this printer": ["the print quality", "the scanner", "the ink cartridge"]},
            "film": {"this film": [], "this documentary": [], "this comedy": [], "this thriller": [],
                     "the sequel": []},
        },
        "predicates": {
            "positive": ["is excellent", "is great", "is superb", "is wonderful", "is impressive", "is fantastic",
                         "is outstanding", "is a real highlight", "exceeded my expectations", "is not bad at all",
                         "is anything but disappointing", "could hardly be better"],
            "negative": ["is terrible", "is awful", "is disappointing", "is poor", "is dreadful", "is mediocre",
                         "is weak", "is a real letdown", "fell short of my expectations", "is not good at all",
                         "is anything but impressive", "could hardly be worse"],
        },
        "item_predicates": {
            "product": {"positive": ["works perfectly", "does exactly what it promises"],
                        "negative": ["stopped working after a week", "broke on the second day"]},
            "film": {"positive": ["kept me gripped from start to finish", "made me laugh out loud"],
                     "negative": ["bored me within minutes", "made me check my watch constantly"]},
        },
        "verdicts": {
            "product": {"positive": ["I would buy it again.", "I can recommend it to anyone.",
                                     "It was worth every penny.", "I am very happy with it."],
                        "negative": ["I would not buy it again.", "I cannot recommend it.",
                                     "It was a waste of money.", "I am sending it back."]},
            "film": {"positive": ["I would happily watch it again.", "I can recommend it to anyone.",
                                  "It was worth every minute.", "I left the cinema smiling."],
                     "negative": ["I would not watch it again.", "I cannot recommend it.",
                                  "It was a waste of two hours.", "I nearly left halfway through."]},
        },
    },
    "de": {
        "aspects": {
            "product": ["der Preis", "die Lieferung", "der Kundenservice", "das Design", "die Verarbeitung",
                        "die Bedienungsanleitung", "die Verpackung"],
            "film": ["die Handlung", "die schauspielerische Leistung", "die Filmmusik", "das Ende", "das Drehbuch",
                     "das Tempo", "die Hauptfigur", "die Kameraführung", "der Humor"],
        },
        "items": {
            "product": {"dieses Handy": ["der Akku", "der Bildschirm", "die Kamera", "der Lautsprecher"],
                        "dieser Laptop": ["der Akku", "der Bildschirm", "die Tastatur", "das Touchpad"],
                        "dieser Mixer": ["der Motor", "der Deckel", "der Behälter"],
                        "dieser Staubsauger": ["die Saugleistung", "der Akku", "der Filter"],
                        "dieser Wasserkocher": ["der Griff", "der Deckel", "der Kalkfilter"],
                        "diese Kaffeemaschine": ["der Milchaufschäumer", "der Wassertank", "der Kaffee"],
                        "dieser Toaster": ["der Bräunungsregler", "die Krümelschublade"],
                        "dieser Drucker": ["die Druckqualität", "der Scanner", "die Tintenpatrone"]},
            "film": {"dieser Film": [], "diese Dokumentation": [], "diese Komödie": [], "dieser Thriller": [],
                     "die Fortsetzung": []},
        },
        "predicates": {
            "positive": [("ist", "hervorragend"), ("ist", "großartig"), ("ist", "ausgezeichnet"),
                         ("ist", "wunderbar"), ("ist", "beeindruckend"), ("ist", "fantastisch"),
                         ("ist", "erstklassig"), ("ist", "ein echtes Highlight"),
                         ("hat", "meine Erwartungen übertroffen"), ("ist", "überhaupt nicht schlecht"),
                         ("ist", "alles andere als enttäuschend"), ("könnte", "kaum besser sein")],
            "negative": [("ist", "schrecklich"), ("ist", "furchtbar"), ("ist", "enttäuschend"),
                         ("ist", "schwach"), ("ist", "mittelmäßig"), ("ist", "miserabel"),
                         ("ist", "eine echte Enttäuschung"), ("hat", "meine Erwartungen nicht erfüllt"),
                         ("ist", "überhaupt nicht gut"), ("ist", "alles andere als beeindruckend"),
                         ("könnte", "kaum schlechter sein"), ("ist", "ein einziges Ärgernis")],
        },
        "item_predicates": {
            "product": {"positive": [("funktioniert", "einwandfrei"), ("überzeugt", "auf ganzer Linie")],
                        "negative": [("hat", "nach einer Woche den Geist aufgegeben"),
                                     ("war", "schon am zweiten Tag kaputt")]},
            "film": {"positive": [("hat", "mich von Anfang bis Ende gefesselt"), ("hat", "mich zum Lachen gebracht")],
                     "negative": [("hat", "mich nach wenigen Minuten gelangweilt"),
                                  ("war", "eine einzige Qual")]},
        },
        "verdicts": {
            "product": {"positive": ["Eine klare Kaufempfehlung.", "Ich würde wieder zugreifen.",
                                     "Das Geld war gut angelegt.", "Ich bin sehr zufrieden."],
                        "negative": ["Keine Kaufempfehlung.", "Ich würde nicht wieder zugreifen.",
                                     "Das war rausgeworfenes Geld.", "Ich schicke das Gerät zurück."]},
            "film": {"positive": ["Absolut sehenswert.", "Eine klare Empfehlung.",
                                  "Jede Minute hat sich gelohnt.", "Ich habe das Kino gut gelaunt verlassen."],
                     "negative": ["Nicht sehenswert.", "Keine Empfehlung von mir.",
                                  "Das waren zwei verschwendete Stunden.", "Ich wäre fast in der Mitte gegangen."]},
        },
    },
}

# How each language joins clauses; a clause is (subject, predicate).
JOIN = {
    "en": {
        "single": lambda c1, c2: f"{_en(c1)}.",
        "and": lambda c1, c2: f"{_en(c1)} and {_en(c2)}.",
        "but": lambda c1, c2: f"{_en(c1)}, but {_en(c2)}.",
        "although": lambda c1, c2: f"Although {_en(c1)}, {_en(c2)}.",
    },
    "de": {
        "single": lambda c1, c2: f"{_de(c1)}.",
        "and": lambda c1, c2: f"{_de(c1)} und {_de(c2)}.",
        "but": lambda c1, c2: f"{_de(c1)}, aber {_de(c2)}.",
        "although": lambda c1, c2: f"Obwohl {_de(c1, 'sub')}, {_de(c2, 'inv')}.",
    },
}


def _en(clause: tuple[str, str]) -> str:
    return f"{clause[0]} {clause[1]}"


def _de(clause: tuple[str, tuple[str, str]], order: str = "main") -> str:
    subject, (verb, rest) = clause
    if order == "sub":
        return f"{subject} {rest} {verb}"
    if order == "inv":
        return f"{verb} {subject} {rest}"
    return f"{subject} {verb} {rest}"


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def sentiment_example(lang: str, rng: random.Random) -> tuple[str, str]:
    """(sentence, label): the label is the polarity of the last clause, which is the one that decides."""
    words = SENTIMENT[lang]
    domain = rng.choice(["product", "film"])
    label = rng.choice(["positive", "negative"])
    other = "negative" if label == "positive" else "positive"
    item, own_aspects = rng.choice(sorted(words["items"][domain].items()))
    aspects = words["aspects"][domain] + own_aspects * 2

    def clause(polarity: str, use_item: bool) -> tuple:
        if use_item:
            preds = words["predicates"][polarity] + words["item_predicates"][domain][polarity] * 2
            return item, rng.choice(preds)
        return rng.choice(aspects), rng.choice(words["predicates"][polarity])

    kind = rng.choices(["single", "verdict", "and", "but", "although"], weights=[25, 20, 15, 25, 15])[0]
    if kind == "single":
        return _cap(JOIN[lang]["single"](clause(label, rng.random() < 0.4), None)), label
    if kind == "verdict":
        first = _cap(JOIN[lang]["single"](clause(label, True), None))
        return f"{first} {rng.choice(words['verdicts'][domain][label])}", label
    first = clause(label if kind == "and" else other, kind != "and" and rng.random() < 0.3)
    second = clause(label, False)
    while second[0] == first[0] or second[1] == first[1]:
        second = clause(label, False)
    return _cap(JOIN[lang][kind](first, second)), label


# --------------------------------------------------------------------------- sentence pairs
# Each event is a premise template and hypotheses by label. A probe is (template, label when
# its {xq} slot repeats the premise's {x}, label when it holds another value, slot name x).

PAIRS = {
    "en": {
        "people": ["Maria", "Tom", "Anna", "David", "Sarah", "James", "Laura", "Peter"],
        "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        "numbers": ["two", "three", "four", "five", "six"],
        "hours": ["seven", "eight", "nine", "ten", "eleven"],
        "cities": ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Brussels", "Geneva"],
        # plural, singular, place, purpose
        "goods": [("apples", "apple", "at the market", "to bake a cake"),
                  ("books", "book", "at the bookshop", "as presents"),
                  ("tickets", "ticket", "at the station", "for a trip to the coast"),
                  ("shirts", "shirt", "at the department store", "for a wedding"),
                  ("plates", "plate", "at the flea market", "for a dinner party"),
                  ("loaves of bread", "loaf of bread", "at the bakery", "for a picnic"),
                  ("notebooks", "notebook", "at the stationery shop", "for school")],
        "events": {
            "purchase": {
                "premise": "{p} bought {n} {goods} {place} on {day}.",
                "probes": [("{p} was {place} on {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} bought some {goods}.", "entailment", "neutral", "p"),
                           ("{p} bought exactly {nq} {goods}.", "entailment", "contradiction", "n"),
                           ("{p} did not buy any {goods} on {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} bought some {goods}.", "{p} was {place} on {day}.",
                               "Someone bought {n} {goods}.", "{p} bought more than one {one}.",
                               "On {day}, {p} went shopping."],
                "neutral": ["{p} bought the {goods} {purpose}.", "{p} paid for the {goods} in cash.",
                            "The {goods} were on sale.", "{p} was {place} with a friend on {day}.",
                            "{p} bought {n} {goods} {place} on {day} for {p2}.", "{p} also bought some milk."],
                "contradiction": ["{p} did not buy any {goods} on {day}.", "Nobody bought anything {place} on {day}.",
                                  "{p} bought {n2} {goods} {place} on {day}, not {n}."],
            },
            "train": {
                "premise": "{p} took the {h} o'clock train to {city} on {day}.",
                "probes": [("{p} took a train on {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} travelled to {city}.", "entailment", "neutral", "p"),
                           ("{p} took the {hq} o'clock train to {city}.", "entailment", "contradiction", "h"),
                           ("{p} missed the train to {city} on {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} travelled to {city}.", "{p} took a train on {day}.",
                               "Someone travelled to {city} by train.", "{p} was on a train on {day}."],
                "neutral": ["{p} travelled to {city} for work.", "The train to {city} was late.",
                            "{p} had a window seat.", "{p} took the {h} o'clock train to {city} on {day} "
                            "to visit a friend.", "{p} had bought a return ticket."],
                "contradiction": ["{p} missed the train to {city} on {day}.", "{p} did not take any train on {day}.",
                                  "{p} has never set foot in {city}."],
            },
            "run": {
                "premise": "{p} ran {n} kilometres in the park on {day}.",
                "probes": [("{p} was in the park on {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} went running on {day}.", "entailment", "neutral", "p"),
                           ("{p} ran exactly {nq} kilometres.", "entailment", "contradiction", "n"),
                           ("{p} did not run at all on {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} went running on {day}.", "{p} ran more than one kilometre.",
                               "{p} was in the park on {day}.", "Someone ran {n} kilometres."],
                "neutral": ["{p} ran with a friend.", "It was raining in the park on {day}.",
                            "{p} runs every week.", "{p} ran {n} kilometres in the park on {day} "
                            "to train for a marathon.", "{p} was tired after the run."],
                "contradiction": ["{p} did not run at all on {day}.", "{p} stayed away from the park on {day}.",
                                  "{p} ran {n2} kilometres on {day}, not {n}."],
            },
        },
        "probes": [("{p} spent all of {dayq} at home.", "contradiction", "neutral", "day"),
                   ("{pq} did not leave the house on {day}.", "contradiction", "neutral", "p")],
    },
    "fr": {
        "people": ["Marie", "Thomas", "Claire", "Luc", "Sophie", "Julien", "Camille", "Nicolas"],
        "days": ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"],
        "numbers": ["deux", "trois", "quatre", "cinq", "six"],
        "hours": ["sept", "huit", "neuf", "dix", "onze"],
        "cities": ["Londres", "Paris", "Berlin", "Madrid", "Rome", "Vienne", "Lisbonne", "Bruxelles", "Genève"],
        # plural, "aucun(e) + singular", place, purpose
        "goods": [("pommes", "aucune pomme", "au marché", "pour faire un gâteau"),
                  ("livres", "aucun livre", "à la librairie", "pour les offrir"),
                  ("billets", "aucun billet", "à la gare", "pour un voyage sur la côte"),
                  ("chemises", "aucune chemise", "au grand magasin", "pour un mariage"),
                  ("assiettes", "aucune assiette", "au marché aux puces", "pour un dîner entre amis"),
                  ("pains", "aucun pain", "à la boulangerie", "pour un pique-nique"),
                  ("cahiers", "aucun cahier", "à la papeterie", "pour l'école")],
        "events": {
            "purchase": {
                "premise": "{p} a acheté {n} {goods} {place} {day}.",
                "probes": [("{p} était {place} {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} a acheté des {goods}.", "entailment", "neutral", "p"),
                           ("{p} a acheté exactement {nq} {goods}.", "entailment", "contradiction", "n"),
                           ("{p} n'a acheté {one} {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} a acheté des {goods}.", "{p} était {place} {day}.",
                               "Quelqu'un a acheté {n} {goods}.", "{Day}, {p} a fait des courses."],
                "neutral": ["{p} a acheté les {goods} {purpose}.", "{p} a payé les {goods} en espèces.",
                            "Les {goods} étaient en promotion.", "{p} était {place} avec un ami {day}.",
                            "{p} a acheté {n} {goods} {place} {day} pour {p2}.", "{p} a aussi acheté du lait."],
                "contradiction": ["{p} n'a acheté {one} {day}.", "Personne n'a rien acheté {place} {day}.",
                                  "{p} a acheté {n2} {goods} {place} {day}, et non {n}."],
            },
            "train": {
                "premise": "{p} a pris le train de {h} heures pour {city} {day}.",
                "probes": [("{p} a pris un train {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} a voyagé jusqu'à {city}.", "entailment", "neutral", "p"),
                           ("{p} a pris le train de {hq} heures pour {city}.", "entailment", "contradiction", "h"),
                           ("{p} a raté le train pour {city} {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} a voyagé jusqu'à {city}.", "{p} a pris un train {day}.",
                               "Quelqu'un a voyagé en train jusqu'à {city}.", "{p} était dans un train {day}."],
                "neutral": ["{p} a voyagé jusqu'à {city} pour son travail.", "Le train pour {city} était en retard.",
                            "{p} avait une place côté fenêtre.", "{p} a pris le train de {h} heures pour {city} "
                            "{day} pour rendre visite à un ami.", "{p} avait acheté un billet aller-retour."],
                "contradiction": ["{p} a raté le train pour {city} {day}.", "{p} n'a pris aucun train {day}.",
                                  "{p} n'a jamais mis les pieds à {city}."],
            },
            "run": {
                "premise": "{p} a couru {n} kilomètres dans le parc {day}.",
                "probes": [("{p} était dans le parc {dayq}.", "entailment", "neutral", "day"),
                           ("{pq} a fait un jogging {day}.", "entailment", "neutral", "p"),
                           ("{p} a couru exactement {nq} kilomètres.", "entailment", "contradiction", "n"),
                           ("{p} n'a pas couru du tout {dayq}.", "contradiction", "neutral", "day")],
                "entailment": ["{p} a fait un jogging {day}.", "{p} a couru plus d'un kilomètre.",
                               "{p} était dans le parc {day}.", "Quelqu'un a couru {n} kilomètres."],
                "neutral": ["{p} a couru avec un ami.", "Il pleuvait dans le parc {day}.",
                            "{p} court chaque semaine.", "{p} a couru {n} kilomètres dans le parc {day} "
                            "pour préparer un marathon.", "{p} avait mal aux jambes après la course."],
                "contradiction": ["{p} n'a pas couru du tout {day}.", "{p} n'a pas mis les pieds au parc {day}.",
                                  "{p} a couru {n2} kilomètres {day}, et non {n}."],
            },
        },
        "probes": [("{p} a passé toute la journée de {dayq} à la maison.", "contradiction", "neutral", "day"),
                   ("{pq} n'a pas quitté la maison {day}.", "contradiction", "neutral", "p")],
    },
}


def pair_example(lang: str, rng: random.Random) -> tuple[str, str, str]:
    """(premise, hypothesis, label)."""
    words = PAIRS[lang]
    event = words["events"][rng.choice(sorted(words["events"]))]
    slots = _draw(words, rng)
    label = rng.choice(["entailment", "neutral", "contradiction"])
    probes = [p for p in event["probes"] + words["probes"] if label in p[1:3]]
    if rng.random() < 0.5:
        template, if_same, _, slot = rng.choice(probes)
        slots[slot + "q"] = slots[slot] if label == if_same else slots[slot + "2"]
    else:
        template = rng.choice(event[label])
    premise = _cap(event["premise"].format(**slots))
    hypothesis = _cap(template.format(**slots))
    return premise, hypothesis, label


def _draw(words: dict, rng: random.Random) -> dict[str, str]:
    """Values for every slot: x and a different x2 for each comparable slot; xq starts equal to x."""
    slots: dict[str, str] = {}
    for slot, pool in [("p", "people"), ("n", "numbers"), ("day", "days"), ("h", "hours")]:
        slots[slot], slots[slot + "2"] = rng.sample(words[pool], 2)
        slots[slot + "q"] = slots[slot]
    goods, one, place, purpose = rng.choice(words["goods"])
    slots.update(Day=_cap(slots["day"]), city=rng.choice(words["cities"]), goods=goods, one=one, place=place,
                 purpose=purpose)
    return slots


# --------------------------------------------------------------------------- files


def _unique(make: Callable[[random.Random], tuple], rng: random.Random, n: int, seen: set) -> list[tuple]:
    rows: list[tuple] = []
    while len(rows) < n:
        row = make(rng)
        if row[:-1] not in seen:
            seen.add(row[:-1])
            rows.append(row)
    return rows


def write(folder: Path, header: list[str], rows: list[tuple]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(r) for r in [tuple(header), *rows]) + "\n"
    assert all("\t" not in c and "\n" not in c for r in rows for c in r)
    folder.write_text(text, encoding="utf-8")


def main() -> None:
    jobs = [("sentiment", lang, ["sentence", "label"], sentiment_example) for lang in ("en", "de")]
    jobs += [("pairs", lang, ["sentence1", "sentence2", "label"], pair_example) for lang in ("en", "fr")]
    for seed, (task, lang, header, make) in enumerate(jobs):
        rng = random.Random(1000 + seed)
        seen: set = set()
        for split, n in SIZES.items():
            rows = _unique(lambda r, lang=lang, make=make: make(lang, r), rng, n, seen)
            write(HERE / task / lang / f"{split}.tsv", header, rows)


if __name__ == "__main__":
    main()
