"""The built-in task bank's text: the lexicons and sentence frames ``bank`` generates its
tasks from.

Every lexicon (``LEXICONS``: names, settings, containers and their contents, objects,
locations, departures, irony scenarios) is split in two, ``eval`` and ``train``, so no name,
container, content, object, location or irony scenario of one split appears in the other;
the sentence frames (``CONTENTS_*``, ``TRANSFER_*``, ``IRONY_*``) are shared. Answers are
single words (contents, locations, Yes/No).
"""

from __future__ import annotations

from dataclasses import dataclass

PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}  # subject, object, possessive
RELATIONS = {"f": ("sister", "cousin", "friend", "flatmate", "colleague"),
             "m": ("brother", "cousin", "friend", "flatmate", "colleague")}


@dataclass(frozen=True)
class Lexicon:
    names: dict            # gender -> names
    settings: tuple        # (where a container stands, the room), for unexpected contents
    containers: dict       # container -> contents that plausibly fill it (single words)
    rooms: tuple           # rooms of transfer stories
    objects: tuple         # objects moved in transfer stories (singular)
    locations: tuple       # where they are put ("in the ..."; consonant-initial for "a ...")
    departures: tuple      # why the protagonist leaves (3rd person present)
    irony: tuple           # indices into IRONY_SCENARIOS


LEXICONS = {
    "eval": Lexicon(
        names={"f": ("Anna", "Maria", "Sophie", "Laura", "Emily", "Grace", "Hannah", "Julia",
                     "Chloe", "Olivia", "Rachel", "Nora", "Clara", "Alice", "Eva", "Lucy",
                     "Rosa", "Helen", "Fiona", "Irene"),
               "m": ("James", "Daniel", "Peter", "Thomas", "Michael", "David", "Samuel",
                     "Lucas", "Oliver", "Henry", "Adam", "Victor", "Simon", "Felix", "Oscar",
                     "Martin", "Hugo", "Ben", "Leo", "Ryan")},
        settings=(("on the kitchen table", "kitchen"), ("on a desk in the office", "office"),
                  ("on a shelf in the classroom", "classroom"),
                  ("on the workbench in the garage", "garage"),
                  ("on the windowsill in the living room", "living room"),
                  ("on a bench in the hallway", "hallway"),
                  ("on the counter in the staff room", "staff room"),
                  ("on a trolley in the library", "library")),
        containers={
            "box": ("chocolates", "crayons", "buttons", "matches", "tissues", "stickers",
                    "candles", "dominoes"),
            "jar": ("honey", "jam", "pickles", "olives", "mustard", "marmalade", "jellybeans",
                    "coins"),
            "bottle": ("vinegar", "shampoo", "lemonade", "syrup", "ketchup", "perfume",
                       "mouthwash", "water"),
            "tin": ("biscuits", "paint", "sardines", "peaches", "toffees", "cocoa",
                    "shortbread", "screws"),
            "bag": ("popcorn", "rice", "flour", "pretzels", "peanuts", "marshmallows",
                    "lentils", "marbles"),
            "carton": ("milk", "eggs", "cream", "soup", "custard", "juice", "yogurt",
                       "buttermilk"),
        },
        rooms=("living room", "kitchen", "bedroom", "classroom", "office", "garage", "hallway",
               "playroom"),
        objects=("wallet", "ball", "book", "scarf", "ring", "watch", "camera", "notebook",
                 "passport", "sandwich", "hammer", "teddy bear", "puzzle", "necklace",
                 "toy car", "chocolate bar"),
        locations=("basket", "drawer", "cupboard", "box", "backpack", "suitcase", "wardrobe",
                   "bucket"),
        departures=("goes to school", "goes out to buy some bread", "leaves for work",
                    "goes outside to play", "goes for a walk", "goes to the post office",
                    "goes to football practice", "goes to visit a neighbour"),
        irony=tuple(range(0, 26)),
    ),
    "train": Lexicon(
        names={"f": ("Mia", "Zoe", "Amelia", "Isabel", "Lena", "Paula", "Diana", "Vera",
                     "Nina", "Ruth", "Stella", "Tara"),
               "m": ("Jack", "Noah", "Ethan", "Liam", "Paul", "Kevin", "George", "Hector",
                     "Ivan", "Omar", "Tom", "Carl")},
        settings=(("on a table in the attic", "attic"),
                  ("on the floor of the basement", "basement"),
                  ("on a shelf in the pantry", "pantry"), ("on the desk in the study", "study"),
                  ("on a bench in the locker room", "locker room"),
                  ("on the counter in the laundry room", "laundry room")),
        containers={
            "crate": ("apples", "oranges", "potatoes", "onions", "lemons", "melons"),
            "sack": ("sand", "oats", "charcoal", "sawdust", "birdseed", "barley"),
            "packet": ("seeds", "crisps", "noodles", "raisins", "almonds", "sweets"),
            "tub": ("butter", "hummus", "margarine", "glue", "putty", "sorbet"),
            "pouch": ("beads", "pebbles", "pins", "stamps", "seashells", "washers"),
            "canister": ("tea", "sugar", "nails", "bolts", "paprika", "cinnamon"),
        },
        rooms=("attic", "study", "basement", "workshop", "cabin", "boathouse"),
        objects=("umbrella", "torch", "bracelet", "diary", "kite", "violin", "helmet",
                 "thermos"),
        locations=("chest", "trunk", "locker", "hamper", "satchel", "toolbox"),
        departures=("goes jogging", "goes to the bakery", "leaves for a dentist appointment",
                    "goes to the library", "goes to feed the chickens"),
        irony=tuple(range(26, 36)),
    ),
}

# ---------------------------------------------------------------- unexpected contents
# Placeholders as in the reference format (CX S1 S2 XNAM XPRO OBJ_PRO POS_PRO); {surface} and
# {room} are filled by the generator from the setting. The renderer appends the protocol's
# sentences (XNAM does / does not open the CX ...), so no frame says what XNAM does next.
CONTENTS_INTROS = (
    "Here is a CX filled with S1. There is no S2 in the CX.",
    "{Surface} there is a CX. It is filled with S1, and there is no S2 in it.",
    "Someone has left a CX {surface}. The CX contains S1 and no S2 at all.",
    "A CX is standing {surface}. It holds nothing but S1; there is no S2 inside.",
    "There is a CX {surface}, packed to the top with S1. It contains no S2.",
)
# (false label, correct label) pairs.
CONTENTS_LABELS = (
    ('Yet, the label on the CX says "S2" and not "S1".',
     'The label on the CX says "S1" and not "S2".'),
    ('However, the label on the CX reads "S2", not "S1".',
     'The label on the CX reads "S1", not "S2".'),
    ('Oddly, the CX is labeled "S2" rather than "S1".',
     'As it should be, the CX is labeled "S1" rather than "S2".'),
    ('The label on the front of the CX, though, says "S2" and not "S1".',
     'The label on the front of the CX says "S1" and not "S2".'),
    ('Someone has stuck a label on the CX that says "S2", not "S1".',
     'Someone has stuck a label on the CX that says "S1", not "S2".'),
)
CONTENTS_DISCOVERIES = (
    "XNAM finds the CX. XPRO has never seen it before.",
    "XNAM walks into the {room} and notices the CX. XPRO has never seen this CX before.",
    "Later, XNAM comes across the CX. XPRO has no idea who left it there.",
    "XNAM spots the CX while tidying the {room}. XPRO has never seen it before and cannot see "
    "what is inside.",
    "XNAM picks up the CX. It is the first time XPRO has seen it.",
    "When XNAM arrives in the {room}, XPRO sees the CX. XPRO cannot see what is inside it.",
)

# ---------------------------------------------------------------- unexpected transfer
# {old} is o2 (where the protagonist A leaves the object), {new} is o1 (where B moves it).
TRANSFER_SETUPS = (
    "In the {room} there are {A}, {B}, a {old} and a {new}.",
    "{A} and {B} are in the {room}. The room has a {new} and a {old}.",
    "{A} and {pos_A} {rel} {B} are spending the afternoon in the {room}, where there is a {old} "
    "by the window and a {new} by the door.",
    "{A} is in the {room} with {B}. In the corner there are a {new} and a {old}.",
)
TRANSFER_PUTS = (
    "{A} puts the {obj} in the {old} and {leave}.",
    "{A} places {pos_A} {obj} in the {old}. Then {pro_A} {leave}.",
    "{A} carefully puts the {obj} into the {old}. After that, {pro_A} {leave}.",
)
# Same index: the false-belief move and its no-transfer counterpart.
TRANSFER_MOVES = (
    ("While {A} is away, {B} takes the {obj} out of the {old} and puts it in the {new}.",
     "While {A} is away, {B} takes the {obj} out of the {old}, looks at it for a moment, and "
     "puts it back in the {old}."),
    ("Once {A} has gone, {B} moves the {obj} from the {old} to the {new}.",
     "Once {A} has gone, {B} dusts the {new} but leaves the {obj} where it is, in the {old}."),
    ("While {A} is out, {B} needs the {old} for something else, so {pro_B} puts the {obj} in "
     "the {new}.",
     "While {A} is out, {B} looks into the {old}, sees the {obj}, and leaves it there."),
)
TRANSFER_B_LEAVES = ("", "Then {B} leaves the {room} too.", "{B} then goes out as well.")
TRANSFER_RETURNS = (
    "{A} comes back and enters the {room}. {A} did not see what happened while {pro_A} was "
    "away.",
    "A little later, {A} returns to the {room}. {pro_A} does not know what {B} did while "
    "{pro_A} was out.",
    "When {A} comes back, {pro_A} has no idea what went on in the {room} while {pro_A} was "
    "gone.",
)
TRANSFER_PRESENT = (
    "{A} puts the {obj} in the {old}. {A} stays in the {room} and watches {B} take the {obj} out "
    "of the {old} and put it in the {new}.",
    "{A} places {pos_A} {obj} in the {old}. While {A} is still in the {room}, {B} moves the "
    "{obj} from the {old} to the {new}, and {A} sees it happen.",
    "{A} carefully puts the {obj} into the {old}. Right in front of {obj_A}, {B} takes the "
    "{obj} out of the {old} and puts it in the {new}.",
)
TRANSFER_INFORMED = (
    "However, {B} calls {A} and tells {obj_A} that the {obj} is now in the {new}.",
    "But {B} has left a note for {A} saying that the {obj} is now in the {new}, and {A} reads "
    "it.",
    'Then {B} sends {A} a message: "I moved the {obj} to the {new}." {A} reads the message.',
)
TRANSFER_REALITY_PROBES = ("The {obj} is now in the", "Right now, the {obj} is in the",
                           "In fact, the {obj} is in the", "At this moment, the {obj} is in the")
TRANSFER_BELIEF_PROBES = ("{A} will look for the {obj} in the",
                          "{A} will first look for the {obj} in the",
                          "When {A} wants the {obj}, {pro_A} will look in the",
                          "{A} goes to get the {obj} from the")

# ---------------------------------------------------------------- irony
# A speaker {A} makes a remark to {B}. In the ironic variant (``txt``, answer No) the context
# contradicts the remark; in the reversed one (``txt_reverse``, answer Yes) it agrees.
# ``meaning`` is what the remark says if meant literally (for "Did A mean that ...?").
IRONY_SCENARIOS = (
    dict(setup="{A} and {B} have planned a picnic in the park.",
         contradict=("As soon as they spread out the blanket, it starts to pour with rain and "
                     "their sandwiches get soaked.",
                     "A cold wind blows their paper plates away and dark clouds cover the sky."),
         agree=("The sun is shining, and a light breeze keeps them cool.",
                "The sky is clear and blue, and the grass is warm and dry."),
         remark="What lovely weather for a picnic!", meaning="the weather was lovely"),
    dict(setup="{B} cooks dinner for {A}.",
         contradict=("The pasta is burnt, and the sauce is so salty that {A} can barely "
                     "swallow it.",
                     "The rice is still hard and the chicken is raw in the middle."),
         agree=("The pasta is perfectly cooked, and the sauce is rich and full of flavour.",
                "Every dish is delicious, and {A} asks for a second helping."),
         remark="Wow, you are a real chef!", meaning="{B} was a good cook"),
    dict(setup="{A} is waiting for {B} outside the cinema.",
         contradict=("{B} arrives forty minutes late, after the film has already started.",
                     "{B} turns up an hour after they agreed to meet."),
         agree=("{B} arrives ten minutes early, with the tickets already in hand.",
                "{B} turns up at exactly the time they agreed."),
         remark="Right on time, as always!", meaning="{B} was punctual"),
    dict(setup="{B} comes home from the hairdresser.",
         contradict=("The haircut is uneven, with one side much shorter than the other.",
                     "Patches of hair are missing, and the fringe is crooked."),
         agree=("The new haircut is neat and suits {obj_B} perfectly.",
                "The haircut is stylish and makes {obj_B} look years younger."),
         remark="That haircut looks fantastic!", meaning="the haircut looked good"),
    dict(setup="{A} and {B} are driving to the airport.",
         contradict=("They sit in a traffic jam for two hours and barely move.",
                     "Every road is blocked, and they crawl along behind a slow truck."),
         agree=("The roads are empty, and they get there in twenty minutes.",
                "Every light is green, and they arrive well before their flight."),
         remark="Well, this is a quick trip!", meaning="the trip was quick"),
    dict(setup="{A} opens the door of {B}'s bedroom.",
         contradict=("Clothes, plates and old magazines are piled everywhere on the floor.",
                     "The bed is unmade, and dirty socks lie all over the carpet."),
         agree=("The bed is made, the desk is clear and everything is in its place.",
                "The floor has been vacuumed, and all the clothes are folded away."),
         remark="I see you have tidied up in here!", meaning="{B} had tidied the room"),
    dict(setup="{B} tells {A} about the maths exam {pro_B} took this morning.",
         contradict=("{B} failed it, getting only two questions right.",
                     "{B} could not answer a single question."),
         agree=("{B} got the highest mark in the class.",
                "{B} solved every problem, even the bonus question."),
         remark="Well, you must be a genius!", meaning="{B} was a genius"),
    dict(setup="{A} and {B} check into their hotel room.",
         contradict=("The sheets are stained, the shower does not work and the window looks "
                     "onto a brick wall.",
                     "The room is tiny and smells of smoke, and the carpet is sticky."),
         agree=("The room is spacious and spotless, with a balcony overlooking the sea.",
                "There is a huge bed, a marble bathroom and fresh flowers on the table."),
         remark="What a luxurious place this is!", meaning="the room was luxurious"),
    dict(setup="{A} is moving house, and {B} has promised to help.",
         contradict=("{B} sits on the sofa all day and does not lift a single box.",
                     "{B} arrives after everything has been carried into the van."),
         agree=("{B} carries box after box up the stairs all afternoon.",
                "{B} arrives early and packs the whole kitchen by lunchtime."),
         remark="Thanks for all your help today!", meaning="{B} had been very helpful"),
    dict(setup="{B} sings at a karaoke night while {A} listens.",
         contradict=("{B} is out of tune for the whole song and forgets most of the words.",
                     "{B} squeaks through every high note, and people cover their ears."),
         agree=("{B} hits every note, and the whole bar cheers.",
                "{B} sings so well that the audience asks for another song."),
         remark="You have a beautiful voice!", meaning="{B} sang beautifully"),
    dict(setup="{A} and {B} share a flat.",
         contradict=("Last night the neighbours played loud music and shouted until three in "
                     "the morning.",
                     "Last night the neighbours had a party, and the walls shook until dawn."),
         agree=("Last night not a single sound came from the neighbours.",
                "Last night the building was completely silent, and they slept well."),
         remark="Our neighbours are so quiet!", meaning="the neighbours were quiet"),
    dict(setup="{B} gives {A} a birthday present.",
         contradict=("It is a used candle with a price sticker from a charity shop.",
                     "It is a calendar from last year that {B} found in a drawer."),
         agree=("It is the camera {A} has been wanting for months.",
                "It is a book by {A}'s favourite author, signed and with a personal note."),
         remark="What a thoughtful present!", meaning="the present was thoughtful"),
    dict(setup="{B} shows {A} the car {pro_B} has just bought.",
         contradict=("The car is rusty, one door is missing and the engine makes a terrible "
                     "noise.",
                     "The car is dented all over and will not start."),
         agree=("The car is brand new, shiny and very comfortable.",
                "The car is an elegant classic model in perfect condition."),
         remark="What a beautiful car!", meaning="the car was beautiful"),
    dict(setup="{A} and {B} go for a run together.",
         contradict=("{B} has to stop and rest after only two minutes.",
                     "{B} is out of breath before they reach the end of the street."),
         agree=("{B} runs ten kilometres without slowing down.",
                "{B} sprints up the steep hill and is not even out of breath."),
         remark="You are in great shape!", meaning="{B} was in great shape"),
    dict(setup="{A} and {B} have dinner at a new restaurant.",
         contradict=("They wait an hour for their food, and the waiter brings the wrong "
                     "dishes.",
                     "The waiter ignores them, and their soup arrives cold."),
         agree=("The waiter is friendly, and the food arrives quickly and hot.",
                "The staff are attentive and bring everything exactly as ordered."),
         remark="The service here is excellent!", meaning="the service was excellent"),
    dict(setup="{B} has painted the kitchen walls.",
         contradict=("There are drips everywhere and patches where the old colour still "
                     "shows.",
                     "Paint is splashed on the floor and the window, and the walls are streaky."),
         agree=("The walls are smooth, and the colour is even from floor to ceiling.",
                "Every edge is straight, and there is not a single drop on the floor."),
         remark="You did a very neat job!", meaning="{B} had done a neat job"),
    dict(setup="{A} bought a new phone last week.",
         contradict=("The battery dies after less than an hour, every single day.",
                     "The phone needs charging three times before lunch."),
         agree=("The battery still has half its charge after three days.",
                "The phone runs for a whole week without charging."),
         remark="This battery lasts forever!", meaning="the battery lasted a long time"),
    dict(setup="{B} promised to water {A}'s plants during the holidays.",
         contradict=("When {A} comes home, every plant is brown and dry.",
                     "When {A} comes home, the soil is cracked and the leaves have fallen off."),
         agree=("When {A} comes home, the plants are green and healthy.",
                "When {A} comes home, the plants have grown and two of them are flowering."),
         remark="You have clearly taken good care of them!",
         meaning="{B} had taken good care of the plants"),
    dict(setup="{A} knocks on {B}'s door at noon.",
         contradict=("{B} is still in bed, half asleep.",
                     "{B} opens the door in pyjamas, yawning."),
         agree=("{B} has been up since six and has already finished {pos_B} work.",
                "{B} has already been for a run and cooked breakfast."),
         remark="You are an early bird!", meaning="{B} got up early"),
    dict(setup="{B} baked a cake for the party.",
         contradict=("The cake is flat and hard, and it tastes of salt instead of sugar.",
                     "The cake is burnt on top and raw in the middle."),
         agree=("The cake is light and moist, and everyone asks for a second slice.",
                "The cake is delicious, and it is gone within ten minutes."),
         remark="This cake is delicious!", meaning="the cake was delicious"),
    dict(setup="{B} is in charge of the map on their hike.",
         contradict=("After three hours they end up back at the car park where they started.",
                     "They get lost twice and have to ask a farmer for directions."),
         agree=("{B} leads them straight to the top of the hill by the shortest path.",
                "They reach every checkpoint exactly on schedule."),
         remark="You are a brilliant navigator!", meaning="{B} was a good navigator"),
    dict(setup="{A} arrives at {B}'s party.",
         contradict=("There are only two other guests, and they are both asleep on the sofa.",
                     "The room is empty except for a bowl of crisps and a silent radio."),
         agree=("The house is packed with people dancing and laughing.",
                "The music is loud, and everyone is dancing."),
         remark="Wow, this party is really lively!", meaning="the party was lively"),
    dict(setup="{B} tells a joke at dinner.",
         contradict=("Nobody laughs, and there is a long, awkward silence.",
                     "Everyone stares at {obj_B}, and someone changes the subject."),
         agree=("The whole table bursts out laughing.",
                "Everyone laughs so hard that they have tears in their eyes."),
         remark="You are hilarious!", meaning="{B} was funny"),
    dict(setup="{A} watches {B} play in a football match.",
         contradict=("{B} misses an open goal and then scores an own goal.",
                     "{B} trips over the ball twice and is taken off at half time."),
         agree=("{B} scores three goals and is named player of the match.",
                "{B} makes two brilliant saves and scores the winning goal."),
         remark="What a great game you played!", meaning="{B} had played well"),
    dict(setup="{A} tries to use {B}'s old laptop.",
         contradict=("It takes ten minutes just to open an email.",
                     "The screen freezes every time {A} opens a new window."),
         agree=("Every program opens instantly.",
                "Even the biggest files open in a second."),
         remark="This computer is lightning fast!", meaning="the computer was fast"),
    dict(setup="{B} has been working in {pos_B} garden all summer.",
         contradict=("The flower beds are full of weeds, and the lawn is brown and dead.",
                     "Nettles have taken over, and the roses have all died."),
         agree=("The flower beds are bursting with roses, and the lawn is neat and green.",
                "Every bed is full of flowers, and the hedges are neatly trimmed."),
         remark="Your garden looks wonderful!", meaning="the garden looked wonderful"),
    # ---- train split from here (index 26 on)
    dict(setup="{A} and {B} queue to get into a museum.",
         contradict=("The line stretches around the block and has not moved in an hour.",),
         agree=("There is nobody in front of them, and they walk straight in.",),
         remark="Great, no waiting at all!", meaning="there was no waiting"),
    dict(setup="{B} hands {A} a handwritten note.",
         contradict=("The writing is so messy that {A} cannot read a single word.",),
         agree=("The writing is so clear and neat that it looks printed.",),
         remark="Your handwriting is so easy to read!",
         meaning="the handwriting was easy to read"),
    dict(setup="{B} makes {A} a cup of coffee.",
         contradict=("It is cold and tastes like dishwater.",),
         agree=("It is hot and strong, just the way {A} likes it.",),
         remark="This is the best coffee I have ever had!", meaning="the coffee was very good"),
    dict(setup="{B} offered to wash {A}'s car.",
         contradict=("When {A} looks at it, the car is still covered in mud.",),
         agree=("When {A} looks at it, the car is spotless and shines in the sun.",),
         remark="It looks brand new!", meaning="the car looked brand new"),
    dict(setup="{B} is supposed to be studying for an exam.",
         contradict=("{A} finds {obj_B} playing video games with the textbook still closed.",),
         agree=("{A} finds {obj_B} at the desk, surrounded by notes and a highlighted "
                "textbook.",),
         remark="I can see you are working hard!", meaning="{B} was working hard"),
    dict(setup="{A} and {B} arrive at the beach for a swim.",
         contradict=("The water is icy, and a freezing wind blows sand in their faces.",),
         agree=("The water is warm, and the sun is shining.",),
         remark="Perfect day for a swim!", meaning="it was a perfect day for a swim"),
    dict(setup="{B} gives a presentation at work while {A} watches.",
         contradict=("{B} reads every slide word for word, and half the audience falls "
                     "asleep.",),
         agree=("{B} speaks clearly, answers every question and gets a round of applause.",),
         remark="That was a riveting talk!", meaning="the talk was riveting"),
    dict(setup="{A} bought a pair of expensive new shoes.",
         contradict=("After one walk in the rain, the soles come off.",),
         agree=("After a year of daily wear, they still look like new.",),
         remark="These shoes were worth every penny!", meaning="the shoes were worth the money"),
    dict(setup="{B} puts up a shelf in the living room.",
         contradict=("As soon as {A} places a book on it, the shelf falls to the floor.",),
         agree=("The shelf is perfectly level and holds all of {A}'s books.",),
         remark="Very sturdy work!", meaning="the shelf was sturdy"),
    dict(setup="{B}'s dog has been alone in the house all day.",
         contradict=("When they come home, the cushions are torn apart and there is stuffing "
                     "everywhere.",),
         agree=("When they come home, the dog is lying calmly in its bed and nothing is out "
                "of place.",),
         remark="What a well-behaved dog!", meaning="the dog was well-behaved"),
)
IRONY_SPEECH = ('{A} says to {B}: "{remark}"',
                '{A} turns to {B} and says, "{remark}"',
                '"{remark}" {A} says to {B}.',
                '{A} looks at {B} and says: "{remark}"')
IRONY_QUESTIONS = ("Did {A} mean that {meaning}?", "Was {A} being sincere?",
                   "Did {A} really think that {meaning}?", "Was {A} speaking literally?")
