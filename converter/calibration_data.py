"""Built-in calibration prompts, written for pop-local (not copied from any dataset).

Varied on purpose: instructions, long passages with questions, code, math. Used when no --data or
--dataset is given, so calibration works offline. Responses are sampled from the model itself.
"""

__all__ = ["BUILTIN_PROMPTS"]

_PASSAGE_CANAL = (
    "The Harwick canal was dug between 1791 and 1796 to carry coal from the valley pits to the river port. "
    "It climbed sixty metres through a flight of nine locks, each lined with sandstone from a quarry beside the "
    "works. Boats were pulled by horses along a towpath on the eastern bank. When the railway reached the valley "
    "in 1848, traffic fell by half within three years, and the company cut its tolls twice to keep the trade. "
    "The last commercial cargo, a load of bricks, passed the top lock in 1931. The canal was drained in 1950, "
    "and the lock chambers were filled with rubble, but volunteers began clearing them in 1989 and the lower "
    "four locks reopened to small boats in 2004.")

_PASSAGE_CELLS = (
    "A battery cell stores energy as a difference in chemical potential between two electrodes. During discharge, "
    "ions move through the electrolyte from the negative electrode to the positive one while electrons travel "
    "through the external circuit, doing useful work. Charging reverses both flows. Capacity depends on how many "
    "ions each electrode can host, while power depends on how fast they can move: thin electrodes and porous "
    "structures favour power, thick ones favour capacity. Every cycle damages the electrodes slightly, as layers "
    "form on their surfaces and particles crack when they swell and shrink, which is why capacity fades with use "
    "and fades faster when a cell is kept hot or fully charged for long periods.")

_PASSAGE_MARKET = (
    "Every Saturday the square in front of the old town hall fills with stalls. Farmers from the hills sell "
    "cheese, honey and late apples; a fishmonger drives up from the coast before dawn; two brothers sell "
    "second-hand tools laid out on blankets. The market committee charges each stall a fee according to its "
    "width, and last year it raised the fee by a tenth to pay for new awnings. Some traders complained that the "
    "awnings blocked the view of their goods, and the committee agreed to leave the front metre of each stall open.")

BUILTIN_PROMPTS = [
    "Write a short, friendly email to a colleague asking to move tomorrow's meeting to Thursday afternoon.",
    "Explain to a ten-year-old why the sky is blue, in three or four sentences.",
    "Give me five ideas for a rainy-day activity with two children and no screens.",
    "Summarise the main arguments for and against working from home, as a balanced list.",
    "I have eggs, spinach, an onion and some cheese. Suggest a dinner and tell me how to cook it.",
    "Translate into French: 'The library opens at nine, but the reading room opens at ten.'",
    "What are three common mistakes people make when they start running, and how can they avoid them?",
    "Write a haiku about a train station at night.",
    _PASSAGE_CANAL + "\n\nWhy did traffic on the canal fall after 1848, and what did the company do about it?",
    _PASSAGE_CANAL + "\n\nHow many years passed between the last cargo and the reopening of the lower locks?",
    _PASSAGE_CELLS + "\n\nWhy does a battery lose capacity over time? Answer in two sentences.",
    _PASSAGE_CELLS + "\n\nWhat is the difference between designing a cell for power and designing it for capacity?",
    _PASSAGE_MARKET + "\n\nWhat did traders complain about, and how was the complaint resolved?",
    _PASSAGE_MARKET + "\n\nHow is the stall fee calculated, and why was it raised?",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "What does this code print, and why?\n\nxs = [1, 2, 3]\nys = xs\nys.append(4)\nprint(len(xs))",
    "Write a SQL query that lists the ten customers with the highest total order value from tables "
    "customers(id, name) and orders(id, customer_id, amount).",
    "Find the bug:\n\ndef average(values):\n    total = 0\n    for v in values:\n        total += v\n    "
    "return total / len(values) - 1",
    "Write a shell command that counts the lines in all .txt files under the current folder.",
    "A shop sells pencils at 3 for 40 cents. How much do 12 pencils cost? Show your steps.",
    "Solve for x: 3x + 7 = 25. Explain each step.",
    "A train leaves at 14:20 and arrives at 17:05. How long is the journey in minutes?",
    "What is 15% of 240? Then add 18 to the result.",
    "A rectangle has a perimeter of 30 cm and one side of 9 cm. What is its area?",
]
