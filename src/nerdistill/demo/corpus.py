"""A reproducible sample of French phrases with entity spans (PER, LOC, ORG, MISC).

The shipped `data/raw/corpus.txt` and the demo teacher's training text both come from here,
with different seeds, so the whole pipeline runs offline on text that looks like the users'
(medical / administrative notes, narrative, encyclopaedic prose) and the demo teacher is never
scored on the phrases it was trained on.

A template is plain French with `{slot}` markers. A slot is filled from a gazetteer; a slot
that names an entity records a character span over the name only (never over the article
or preposition in front of it: "au CHU de Rennes" -> ORG "CHU de Rennes"). `{de:REGION}`
asks for the slot behind a preposition, contracted the French way ("du Finistère",
"d'Orléans", "aux États-Unis").
"""
from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from nerdistill.io import write_text

ENTITY_TYPES = ("LOC", "MISC", "ORG", "PER")
GENRES = ("medical", "narrative", "encyclopaedic")
GENRE_WEIGHTS = (0.45, 0.30, 0.25)
LONG_LINE_FRACTION = 0.015
# Words in a long line: well past 512 sub-tokens, so annotate must window it.
LONG_LINE_MIN_WORDS = 620


class Span(NamedTuple):
    start: int
    end: int
    type: str


@dataclass(frozen=True)
class LabelledPhrase:
    text: str
    spans: tuple[Span, ...]
    genre: str


# ---------------------------------------------------------------------------------------------
# Gazetteers. Entries with an article are (article, name); the article is "" when the name
# takes none or carries its own ("La Rochelle", "L'Oréal").
# ---------------------------------------------------------------------------------------------

FIRST_NAMES = {
    "m": ["Jean", "Pierre", "François", "Jérôme", "Benoît", "Gaël", "Loïc", "Hervé", "Étienne",
          "Jean-Pierre", "Jean-Baptiste", "Pierre-Yves", "Jean-Luc", "Yann", "Mathéo", "Noé",
          "Raphaël", "Thierry", "Olivier", "Hugo", "Louis", "Karim", "Mehdi", "Théo", "Cédric",
          "Frédéric", "Sébastien", "Grégoire", "Aurélien", "Joël", "Michel", "Antoine", "Erwan"],
    "f": ["Marie", "Hélène", "Éloïse", "Cécile", "Zoé", "Léa", "Anaïs", "Noémie", "Chloé",
          "Marie-Claire", "Anne-Sophie", "Marie-Hélène", "Gaëlle", "Maëlys", "Inès", "Françoise",
          "Béatrice", "Solène", "Agnès", "Camille", "Sophie", "Nathalie", "Océane", "Fatima",
          "Yasmine", "Clémence", "Mélanie", "Valérie", "Juliette", "Séverine", "Adèle", "Maïwenn"],
}

LAST_NAMES = [
    "Dupont", "Lefèvre", "Martin", "Bernard", "Dubois", "Durand", "Leroy", "Moreau", "Laurent",
    "Lefebvre", "Fournier", "Girard", "Mercier", "Guérin", "Chevalier", "Legrand", "Gauthier",
    "Perrin", "Roussel", "Marchand", "Duval", "Dumont", "Lemaire", "Noël", "Meunier", "Rivière",
    "Brunet", "Gaillard", "Barbier", "Gérard", "Renard", "Schmitt", "Leroux", "Caron", "Picard",
    "Fabre", "Lacroix", "Bourgeois", "Leclerc", "Payet", "Le Gall", "Le Goff", "Kerjean",
    "Nguyen", "Benali", "Haddad", "Diallo", "Da Silva", "Ferreira", "Morvan", "Thébault",
    "Bézier", "Prévost", "Jégou", "Hoarau", "de La Fontaine", "de Villepin", "du Bellay",
    "de Saint-Exupéry", "Giscard d'Estaing", "Le Bihan", "Aubry-Lecomte", "Collin-Brière",
]

# Civil titles only: they follow "de", "à", "chez" without an article.
TITLES = {"m": ["M.", "M.", "Monsieur"], "f": ["Mme", "Mme", "Madame", "Mlle"]}

CITIES = [
    "Rennes", "Lyon", "Marseille", "Toulouse", "Nice", "Nantes", "Strasbourg", "Montpellier",
    "Bordeaux", "Lille", "Brest", "Reims", "Saint-Étienne", "Toulon", "Grenoble", "Dijon",
    "Angers", "Nîmes", "Clermont-Ferrand", "Aix-en-Provence", "Limoges", "Tours", "Amiens",
    "Metz", "Besançon", "Perpignan", "Orléans", "Rouen", "Caen", "Mulhouse", "Nancy", "Avignon",
    "Poitiers", "Pau", "Quimper", "Vannes", "Saint-Malo", "Ajaccio", "Bastia", "Annecy",
    "Chambéry", "Lorient", "Évry", "Issy-les-Moulineaux", "Boulogne-Billancourt", "Épinal",
    "Angoulême", "Arles", "Albi", "Auxerre", "Bayonne", "Colmar", "Valence", "La Rochelle",
    "Paris", "Saint-Brieuc", "Fougères", "Morlaix", "Carhaix-Plouguer",
]
FOREIGN_CITIES = ["Bruxelles", "Genève", "Montréal", "Québec", "Liège", "Lausanne", "Dakar",
                  "Alger", "Tunis", "Casablanca", "Berlin", "Madrid", "Rome", "Londres", "Lisbonne"]

REGIONS = [("la", "Bretagne"), ("la", "Normandie"), ("l'", "Occitanie"), ("la", "Nouvelle-Aquitaine"),
           ("l'", "Auvergne-Rhône-Alpes"), ("les", "Hauts-de-France"), ("le", "Grand Est"),
           ("l'", "Île-de-France"), ("la", "Provence-Alpes-Côte d'Azur"), ("la", "Corse"),
           ("la", "Bourgogne-Franche-Comté"), ("les", "Pays de la Loire"), ("le", "Finistère"),
           ("la", "Gironde"), ("le", "Morbihan"), ("l'", "Ille-et-Vilaine"), ("la", "Haute-Savoie"),
           ("le", "Var"), ("les", "Bouches-du-Rhône"), ("la", "Guadeloupe"), ("la", "Martinique"),
           ("", "La Réunion"), ("les", "Côtes-d'Armor"), ("la", "Loire-Atlantique"), ("l'", "Alsace")]

COUNTRIES = [("la", "France"), ("l'", "Espagne"), ("l'", "Italie"), ("l'", "Allemagne"),
             ("la", "Belgique"), ("la", "Suisse"), ("le", "Portugal"), ("le", "Canada"),
             ("le", "Maroc"), ("le", "Sénégal"), ("l'", "Algérie"), ("la", "Tunisie"), ("le", "Japon"),
             ("les", "États-Unis"), ("le", "Royaume-Uni"), ("le", "Brésil"), ("la", "Pologne"),
             ("l'", "Irlande"), ("le", "Vietnam"), ("le", "Luxembourg")]

RIVERS = [("la", "Loire"), ("la", "Seine"), ("le", "Rhône"), ("la", "Garonne"), ("la", "Dordogne"),
          ("la", "Vilaine"), ("la", "Marne"), ("la", "Moselle"), ("le", "Lot"), ("l'", "Allier"),
          ("la", "Saône"), ("la", "Durance"), ("le", "Rhin"), ("l'", "Isère"), ("l'", "Aulne")]

LANDMARKS = [("le", "Mont-Saint-Michel"), ("le", "massif des Vosges"), ("les", "Pyrénées"),
             ("les", "Alpes"), ("le", "Massif central"), ("la", "baie de Somme"),
             ("la", "forêt de Brocéliande"), ("le", "lac d'Annecy"), ("les", "gorges du Verdon"),
             ("la", "presqu'île de Crozon"), ("la", "Camargue"), ("le", "Jura")]

HOSPITAL_NAMES = [("l'", "hôpital Necker"), ("l'", "hôpital de la Pitié-Salpêtrière"),
                  ("l'", "hôpital Édouard-Herriot"), ("la", "clinique Pasteur"), ("l'", "Institut Curie"),
                  ("l'", "Institut Gustave-Roussy"), ("l'", "Hôpital européen Georges-Pompidou"),
                  ("l'", "hôpital Bichat"), ("l'", "hôpital Lariboisière"), ("l'", "hôpital de la Timone"),
                  ("l'", "hôpital Pontchaillou"), ("la", "clinique Saint-Joseph"),
                  ("l'", "hôpital d'instruction des armées Bégin")]
# Institutions named after a city: "CHU de Rennes", "CPAM d'Orléans".
HOSPITAL_KINDS = [("le", "CHU"), ("le", "centre hospitalier"), ("le", "CHRU"), ("la", "polyclinique"),
                  ("le", "centre de lutte contre le cancer")]
ADMIN_KINDS = [("la", "CPAM"), ("la", "CAF"), ("la", "MDPH"), ("le", "tribunal judiciaire"),
               ("la", "mairie"), ("la", "préfecture"), ("l'", "URSSAF"), ("la", "Mission locale"),
               ("le", "conseil départemental"), ("l'", "université"), ("le", "rectorat")]

ORGS = [("le", "ministère de la Santé"), ("le", "ministère de l'Intérieur"), ("le", "ministère des Armées"),
        ("le", "ministère de l'Éducation nationale"), ("la", "Haute Autorité de santé"),
        ("l'", "Assurance maladie"), ("l'", "Inserm"), ("le", "CNRS"), ("l'", "AP-HP"), ("la", "SNCF"),
        ("la", "Croix-Rouge française"), ("les", "Restos du Cœur"), ("l'", "OMS"), ("l'", "Unicef"),
        ("le", "Conseil constitutionnel"), ("l'", "Assemblée nationale"), ("le", "Sénat"),
        ("la", "Banque de France"), ("l'", "Olympique de Marseille"), ("le", "Stade rennais"),
        ("l'", "Académie française"), ("l'", "Institut Pasteur"),
        ("la", "Mutualité française"), ("l'", "Agence nationale de sécurité du médicament"),
        ("le", "Secours populaire"), ("la", "Ligue contre le cancer"), ("l'", "Établissement français du sang")]
COMPANIES = ["Air France", "Renault", "Michelin", "Danone", "TotalEnergies", "L'Oréal", "Orange",
             "Airbus", "Sanofi", "Decathlon", "Médecins sans frontières", "France Travail", "Doctolib",
             "Ouest-France", "Peugeot", "Thales", "Capgemini", "Bonduelle", "Leroy Merlin", "Vinci"]

UNIVERSITIES = [("l'", "École normale supérieure"), ("l'", "École polytechnique"), ("", "Sciences Po"),
                ("", "Sorbonne Université"), ("l'", "université Paris-Saclay"), ("l'", "université de Strasbourg"),
                ("l'", "École nationale des chartes"), ("l'", "université Rennes 2")]
SPORT_CLUBS = [("l'", "Olympique de Marseille"), ("le", "Stade rennais"), ("le", "Paris Saint-Germain"),
               ("le", "Stade toulousain"), ("l'", "AS Saint-Étienne"), ("le", "FC Nantes")]

EVENTS = [("la", "Seconde Guerre mondiale"), ("la", "Révolution française"), ("le", "Tour de France"),
          ("le", "Festival de Cannes"), ("les", "Jeux olympiques"), ("la", "Fête de la musique"),
          ("le", "Salon de l'agriculture"), ("la", "Coupe du monde"), ("les", "Journées du patrimoine"),
          ("le", "Printemps de Bourges"), ("les", "Vieilles Charrues"), ("le", "Festival interceltique"),
          ("la", "Grande Guerre"), ("le", "Mondial de l'automobile"), ("la", "Commune de Paris"),
          ("le", "Téléthon"), ("la", "Semaine sainte"), ("les", "Francofolies")]
WORKS = ["Les Misérables", "Le Petit Prince", "Germinal", "Madame Bovary", "L'Étranger",
         "Le Rouge et le Noir", "Notre-Dame de Paris", "La Marseillaise", "Le Bourgeois gentilhomme",
         "Cyrano de Bergerac", "Les Fleurs du mal", "Le Fabuleux Destin d'Amélie Poulain",
         "Le Comte de Monte-Cristo", "La Peste", "Bienvenue chez les Ch'tis", "Les Choristes",
         "Le Tour du monde en quatre-vingts jours", "Astérix le Gaulois", "Intouchables"]
PRIZES = [("le", "prix Goncourt"), ("le", "prix Nobel de médecine"), ("le", "prix Renaudot"),
          ("le", "César du meilleur film"), ("la", "Palme d'or"), ("le", "prix Femina"),
          ("la", "Légion d'honneur")]
NATIONALITIES = ["Français", "Allemands", "Italiens", "Espagnols", "Belges", "Suisses", "Britanniques",
                 "Portugais", "Marocains", "Canadiens", "Québécois", "Japonais", "Brésiliens", "Bretons",
                 "Corses", "Alsaciens", "Basques", "Européens", "Normands", "Polonais"]

MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
          "octobre", "novembre", "décembre"]
WEEKDAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]
DRUGS = ["paracétamol", "amoxicilline", "ibuprofène", "metformine", "lévothyroxine", "amlodipine",
         "héparine", "furosémide", "oméprazole", "tramadol"]

# ---------------------------------------------------------------------------------------------
# Templates. Agreement with the main person ({TITLE} {FIRST} {LAST} {NAME}): {e} {il} {Il} {lui} {x} {un}.
# ---------------------------------------------------------------------------------------------

TEMPLATES: dict[str, list[str]] = {
    "medical": [
        "{TITLE} {LAST} est suivi{e} {à:HOSP_CITY} depuis {MONTH}.",
        "Le dossier de {TITLE} {LAST} a été transmis {à:ADMIN_CITY}.",
        "{TITLE} {NAME}, {AGE} ans, est admis{e} aux urgences {de:HOSP_CITY} pour une douleur thoracique.",
        "Patient{e} de {AGE} ans, adressé{e} par le Dr {LAST} {de:CITY}, pour bilan d'une anémie.",
        "Compte rendu d'hospitalisation : {TITLE} {NAME} a séjourné {à:HOSP} du {DATE} au {DATE2}.",
        "Traitement de sortie : {DRUG} {DOSE} matin et soir pendant {DAYS} jours.",
        "{Il} sera revu{e} en consultation par le Pr {LAST} {à:HOSP_CITY} le {DATE}.",
        "La demande d'allocation de {TITLE} {LAST} est en cours d'instruction {à:ADMIN_CITY}.",
        "Courrier adressé au Dr {NAME2}, médecin traitant à {CITY}.",
        "Antécédents : appendicectomie en {YEAR}, hypertension artérielle traitée depuis {YEAR2}.",
        "{TITLE} {LAST} a été transféré{e} {de:HOSP_CITY} vers {HOSP} dans la nuit du {DATE}.",
        "L'IRM réalisée {à:HOSP} ne montre pas de lésion évolutive.",
        "Le remboursement des soins de {TITLE} {NAME} a été validé par {ADMIN_CITY} le {DATE}.",
        "Dossier n° {DOSSIER} : {TITLE} {LAST}, né{e} le {DATE} à {CITY}, domicilié{e} {en:REGION}.",
        "Selon {ORG}, le taux de vaccination {en:REGION} atteint {PCT} % chez les plus de {AGE} ans.",
        "Une réunion de concertation pluridisciplinaire s'est tenue {à:HOSP_CITY} le {WEEKDAY} {DATE}.",
        "{TITLE} {NAME} souhaite être suivi{e} près de chez {lui}, à {CITY}, plutôt qu'à {CITY2}.",
        "Le patient ne présente aucune allergie connue et son état général est conservé.",
        "Tension artérielle à {NUM}/{NUM2} mmHg, fréquence cardiaque à {NUM3} battements par minute.",
        "Reprise du travail prévue le {DATE}, sous réserve de l'avis du médecin du travail.",
        "L'assistante sociale {de:HOSP_CITY} a pris contact avec {ADMIN_CITY} pour {TITLE} {LAST}.",
        "{ORG} rappelle que la dose {de:DRUG} ne doit pas dépasser {DOSE} par prise.",
        "Une infirmière mandatée par {ORG} passe chaque {WEEKDAY} chez {TITLE} {LAST} à {CITY}.",
        "Pièces jointes : ordonnance du Dr {LAST}, attestation {de:ORG} et courrier {de:ADMIN_CITY}.",
        "{TITLE} {NAME} a participé à l'essai clinique mené par {ORG} et {HOSP}.",
        "Rendez-vous fixé le {DATE} à {TIME} au service de cardiologie {de:HOSP_CITY}.",
        "Aucune complication n'a été observée durant les {DAYS} jours d'hospitalisation.",
        "Le médecin conseil {de:ADMIN_CITY} a rendu un avis favorable le {DATE}.",
        "Jusqu'à nouvel ordre, {TITLE} {LAST} reste sous surveillance {à:HOSP}.",
        "La famille de {TITLE} {NAME}, originaire {de:COUNTRY}, demande un interprète.",
        "Le montant restant à charge s'élève à {AMOUNT} euros après intervention de la mutuelle.",
    ],
    "narrative": [
        "{NAME} avait quitté {CITY} un matin, en {MONTH}, sans prévenir personne.",
        "Ce soir-là, {FIRST} retrouva {FIRST2} sur les quais {de:RIVER}, près du vieux pont.",
        "« Tu viendras à {CITY} pour {EVENT} ? » demanda {FIRST} en souriant.",
        "Chaque été, la famille {LAST} louait une maison {en:REGION}, à deux pas de la mer.",
        "{FIRST} relisait « {WORK} » pour la troisième fois, assis{e} près de la fenêtre.",
        "Lorsque {FIRST2} arriva à la gare {de:CITY}, le train pour {CITY2} était déjà parti.",
        "Son grand-père avait travaillé quarante ans chez {COMPANY} avant de prendre sa retraite à {CITY}.",
        "Il pleuvait depuis trois jours et personne n'osait sortir.",
        "{NAME} et {NAME2} s'étaient connus pendant {EVENT}, en {YEAR}.",
        "{de:CITY} à {CITY2}, le voyage dura près de {NUM} heures.",
        "Les {NATS} du camping riaient fort, et {FIRST} finit par les rejoindre.",
        "{FIRST} n'avait jamais vu {LANDMARK} ; {il} en parla pendant des semaines.",
        "Le vieux {LAST} racontait qu'il avait pêché {dans:RIVER} jusqu'à l'âge de {AGE} ans.",
        "À {TIME}, la boulangerie de la place était déjà pleine.",
        "{FIRST} écrivit à sa sœur, installée {en:COUNTRY} depuis {YEAR}, une longue lettre.",
        "Quand l'orage éclata, {FIRST} et {FIRST2} se réfugièrent sous le porche de l'église.",
        "Le lendemain, {NAME} prit un poste {à:ORG}, à {CITY}.",
        "Personne ne savait pourquoi la maison du bout de la rue était restée vide si longtemps.",
        "Elle avait gardé un souvenir {de:EVENT} dans un tiroir, avec une photo {de:FIRST2}.",
        "{FIRST} regardait {RIVER} couler sous ses fenêtres, à {CITY}.",
        "Tous les dimanches, {NAME} allait voir jouer {SPORTCLUB} avec son père.",
        "Après la projection du film « {WORK} », {FIRST} resta silencieu{x} un long moment.",
    ],
    "encyclopaedic": [
        "{CITY} est une commune française située {en:REGION}, sur les bords {de:RIVER}.",
        "{NAME}, né{e} à {CITY} en {YEAR}, est un{e} écrivain{e} français{e} à qui l'on doit « {WORK} ».",
        "{COMPANY} est une organisation française fondée en {YEAR} à {CITY}.",
        "{ORG} a vu le jour en {YEAR} sous l'impulsion {de:NAME}.",
        "{RIVER} prend sa source {dans:LANDMARK} et traverse {CITY} avant de rejoindre la mer.",
        "En {YEAR}, {NAME} reçoit {PRIZE} pour l'ensemble de son œuvre.",
        "L'histoire {de:COUNTRY} a été profondément marquée par {EVENT}.",
        "La population {de:CITY} s'élevait à {BIGNUM} habitants au recensement de {YEAR}.",
        "{WORK} est une œuvre {de:NAME}, publiée pour la première fois en {YEAR}.",
        "Les {NATS} représentent environ {PCT} % des visiteurs étrangers {de:REGION}.",
        "Le siège {de:ORG} se trouve à {CITY}, non loin de la gare.",
        "Né{e} à {CITY} en {YEAR}, {NAME} étudie la médecine avant de rejoindre {ORG}.",
        "{HOSP} est un établissement de santé fondé au XIXe siècle.",
        "{CITY} est jumelée avec {FCITY} depuis {YEAR}.",
        "Le climat {de:REGION} est de type océanique, avec des hivers doux et humides.",
        "La superficie de la commune est de {NUM} kilomètres carrés.",
        "Chaque année au mois {de:MONTH}, {CITY} accueille {EVENT}.",
        "Ancien élève {de:UNIV}, {NAME} enseigne ensuite à {FCITY}.",
        "{COMPANY} emploie près de {BIGNUM} salariés, principalement {en:COUNTRY} et {en:COUNTRY2}.",
        "L'économie locale repose sur l'agriculture, le tourisme et quelques industries.",
        "Chaque année, des milliers de randonneurs venus {de:COUNTRY} découvrent {LANDMARK}.",
        "Le traité signé à {FCITY} en {YEAR} met fin au conflit entre {COUNTRY} et {COUNTRY2}.",
    ],
}

SLOT = re.compile(r"\{(?:(de|à|en|dans):)?([A-Za-z0-9_]+)\}")
VOWELS = "aeiouyéèêëàâîïôöûüœhAEIOUYÉÈÊËÀÂÎÏÔÖÛÜŒH"


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _contract(prep: str, article: str, name: str, kind: str) -> str:
    """The French words in front of `name` for `prep` + `article` ("de" + "le" -> "du ")."""
    if prep == "de":
        if article == "":
            return "d'" if name[0] in VOWELS and not name.startswith(("La ", "Le ")) else "de "
        return {"le": "du ", "la": "de la ", "l'": "de l'", "les": "des "}[article]
    if prep == "à":
        return {"": "à ", "le": "au ", "la": "à la ", "l'": "à l'", "les": "aux "}[article]
    if prep == "en":
        if article in ("la", "l'"):
            return "en "
        if article == "":
            return "à " if kind == "city" or name.startswith(("La ", "Le ")) else "en "
        country = kind == "country"
        return {"le": "au " if country else "dans le ", "les": "aux " if country else "dans les "}[article]
    if prep == "dans":
        return {"": "dans ", "le": "dans le ", "la": "dans la ", "l'": "dans l'", "les": "dans les "}[article]
    return {"": "", "le": "le ", "la": "la ", "l'": "l'", "les": "les "}[article]


def _date(rng: random.Random) -> str:
    day = rng.randint(1, 28)
    return f"{'1er' if day == 1 else day} {rng.choice(MONTHS)} {rng.randint(2015, 2025)}"


# Slots that are not entities: dates, numbers, amounts, drug names.
PLAIN_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "DATE": _date, "DATE2": _date,
    "MONTH": lambda r: r.choice(MONTHS), "WEEKDAY": lambda r: r.choice(WEEKDAYS),
    "YEAR": lambda r: str(r.randint(1789, 2024)), "YEAR2": lambda r: str(r.randint(1850, 2024)),
    "AGE": lambda r: str(r.randint(2, 97)), "NUM": lambda r: str(r.randint(3, 180)),
    "NUM2": lambda r: str(r.randint(50, 110)), "NUM3": lambda r: str(r.randint(45, 130)),
    "DAYS": lambda r: str(r.randint(2, 30)), "PCT": lambda r: f"{r.randint(1, 99)},{r.randint(0, 9)}",
    "TIME": lambda r: f"{r.randint(7, 19)} h {r.choice(['00', '15', '30', '45'])}",
    "DOSE": lambda r: f"{r.choice([5, 10, 20, 40, 100, 250, 500, 1000])} mg",
    "AMOUNT": lambda r: f"{r.randint(12, 2400)},{r.randint(10, 99)}",
    "BIGNUM": lambda r: f"{r.randint(1, 950)} {r.randint(0, 999):03d}",
    "DOSSIER": lambda r: f"{r.randint(2015, 2025)}-{r.randint(0, 99999):05d}",
    "DRUG": lambda r: r.choice(DRUGS),
}

# Entity slots drawn from a gazetteer of (article, name): slot -> (entries, type, kind).
ARTICLE_SLOTS: dict[str, tuple[list[tuple[str, str]], str, str]] = {
    "REGION": (REGIONS, "LOC", "region"), "COUNTRY": (COUNTRIES, "LOC", "country"),
    "COUNTRY2": (COUNTRIES, "LOC", "country"), "RIVER": (RIVERS, "LOC", "river"),
    "LANDMARK": (LANDMARKS, "LOC", "landmark"), "HOSP": (HOSPITAL_NAMES, "ORG", "org"),
    "ORG": (ORGS, "ORG", "org"), "UNIV": (UNIVERSITIES, "ORG", "org"),
    "SPORTCLUB": (SPORT_CLUBS, "ORG", "org"), "EVENT": (EVENTS, "MISC", "event"),
    "PRIZE": (PRIZES, "MISC", "prize"),
}
# Entity slots drawn from a list of bare names: slot -> (names, type, kind).
BARE_SLOTS: dict[str, tuple[list[str], str, str]] = {
    "CITY": (CITIES, "LOC", "city"), "CITY2": (CITIES, "LOC", "city"),
    "FCITY": (FOREIGN_CITIES, "LOC", "city"), "COMPANY": (COMPANIES, "ORG", "org"),
    "WORK": (WORKS, "MISC", "work"),
    "NATS": (NATIONALITIES, "MISC", "nationality"),
}


class _Renderer:
    """Fills one template's slots; holds the phrase's main person so agreement stays consistent."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.gender = rng.choice("mf")
        self.other_gender = rng.choice("mf")
        self.first = rng.choice(FIRST_NAMES[self.gender])
        self.last = rng.choice(LAST_NAMES)

    def fill(self, prep: str, slot: str) -> tuple[str, str, str | None]:
        """(words before the value, the value, its entity type or None) for one slot."""
        plain = self._plain(slot)
        if plain is not None:
            return _contract(prep, "", plain, "plain"), plain, None
        article, name, type_, kind = self._entity(slot)
        return _contract(prep, article, name, kind), name, type_

    def _plain(self, slot: str) -> str | None:
        feminine = self.gender == "f"
        agreement = {"e": ("", "e"), "il": ("il", "elle"), "Il": ("Il", "Elle"),
                     "lui": ("lui", "elle"), "x": ("x", "se"), "un": ("un", "une")}
        if slot in agreement:
            return agreement[slot][feminine]
        if slot == "TITLE":
            return self.rng.choice(TITLES[self.gender])
        if slot in PLAIN_SLOTS:
            return PLAIN_SLOTS[slot](self.rng)
        return None

    def _entity(self, slot: str) -> tuple[str, str, str, str]:
        """(article, name, type, kind) for an entity slot."""
        person = self._person(slot)
        if person is not None:
            return "", person, "PER", "person"
        if slot in ("HOSP_CITY", "ADMIN_CITY"):
            return self._institution(HOSPITAL_KINDS if slot == "HOSP_CITY" else ADMIN_KINDS)
        if slot in BARE_SLOTS:
            names, type_, kind = BARE_SLOTS[slot]
            return "", self.rng.choice(names), type_, kind
        if slot in ARTICLE_SLOTS:
            entries, type_, kind = ARTICLE_SLOTS[slot]
            article, name = self.rng.choice(entries)
            return article, name, type_, kind
        raise ValueError(f"template slot {{{slot}}} has no filler; add it to PLAIN_SLOTS, "
                         "BARE_SLOTS or ARTICLE_SLOTS")

    def _person(self, slot: str) -> str | None:
        if slot == "FIRST":
            return self.first
        if slot == "LAST":
            return self.last
        if slot == "NAME":
            return f"{self.first} {self.last}"
        if slot == "FIRST2":
            return self.rng.choice(FIRST_NAMES[self.other_gender])
        if slot == "NAME2":
            return f"{self.rng.choice(FIRST_NAMES[self.other_gender])} {self.rng.choice(LAST_NAMES)}"
        return None

    def _institution(self, kinds: list[tuple[str, str]]) -> tuple[str, str, str, str]:
        """A city's institution, named whole as one ORG: "CHU de Rennes", "CPAM d'Orléans"."""
        article, kind = self.rng.choice(kinds)
        city = self.rng.choice(CITIES)
        return article, f"{kind} {_contract('de', '', city, 'city')}{city}", "ORG", "org"


def render(template: str, rng: random.Random, genre: str) -> LabelledPhrase:
    """Fill `template`'s slots; entity spans index the returned text exactly."""
    renderer = _Renderer(rng)
    parts: list[str] = []
    spans: list[Span] = []
    length = 0
    cursor = 0
    for match in SLOT.finditer(template):
        literal = template[cursor:match.start()]
        lead, value, type_ = renderer.fill(match.group(1) or "", match.group(2))
        parts.extend([literal, lead])
        length += len(literal) + len(lead)
        if type_ is not None:
            spans.append(Span(length, length + len(value), type_))
        parts.append(value)
        length += len(value)
        cursor = match.end()
    parts.append(template[cursor:])
    text = "".join(parts)
    # Sentence-initial capital, only where it does not shift offsets.
    if text[:1].islower() and len(text[0].upper()) == 1:
        text = text[0].upper() + text[1:]
    return LabelledPhrase(text, tuple(spans), genre)


def _concatenate(phrases: list[LabelledPhrase]) -> LabelledPhrase:
    """Join phrases with single spaces into one paragraph, shifting their spans."""
    spans: list[Span] = []
    offset = 0
    for phrase in phrases:
        spans.extend(Span(s.start + offset, s.end + offset, s.type) for s in phrase.spans)
        offset += len(phrase.text) + 1
    return LabelledPhrase(" ".join(p.text for p in phrases), tuple(spans), phrases[0].genre)


def _long_paragraph(rng: random.Random, genre: str) -> LabelledPhrase:
    phrases: list[LabelledPhrase] = []
    words = 0
    while words < LONG_LINE_MIN_WORDS:
        phrase = render(rng.choice(TEMPLATES[genre]), rng, genre)
        phrases.append(phrase)
        words += len(phrase.text.split())
    return _concatenate(phrases)


def generate(seed: int, n: int, long_fraction: float = LONG_LINE_FRACTION) -> list[LabelledPhrase]:
    """`n` labelled phrases in the medical / narrative / encyclopaedic mix, the same for a seed.

    About `long_fraction` of them (at least one when that is > 0 and n >= 100) are paragraphs
    of more than LONG_LINE_MIN_WORDS words, longer than one 512-token window.
    """
    if n < 0 or not 0.0 <= long_fraction <= 1.0:
        raise ValueError(f"need n >= 0 and long_fraction in [0, 1], got n={n}, long_fraction={long_fraction}")
    rng = random.Random(seed)
    num_long = round(n * long_fraction)
    if long_fraction > 0 and n >= 100:
        num_long = max(1, num_long)
    long_at = set(rng.sample(range(n), num_long))
    phrases = []
    for index in range(n):
        genre = rng.choices(GENRES, weights=GENRE_WEIGHTS)[0]
        if index in long_at:
            phrases.append(_long_paragraph(rng, genre))
        else:
            phrases.append(render(rng.choice(TEMPLATES[genre]), rng, genre))
    return phrases


def write_corpus(path: str | Path, seed: int, n: int) -> int:
    """Write `generate(seed, n)` to `path`, one phrase a line (UTF-8), atomically; return n."""
    phrases = generate(seed, n)
    write_text(path, "".join(phrase.text + "\n" for phrase in phrases))
    return len(phrases)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace, params: None) -> int:
    write_corpus(args.out, seed=args.seed, n=args.n)
    return 0
