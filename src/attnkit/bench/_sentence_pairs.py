"""Sentence pairs for the Hugging Face fidelity benchmark (written for attnkit).

They span paraphrases, related sentences and unrelated ones, so that pair
similarities have a spread worth ranking. Lengths vary, so batches are padded.
"""

PAIRS = (
    ("The train to Leeds was delayed by forty minutes.", "Our train to Leeds arrived about forty minutes late."),
    ("She planted tomatoes along the south wall of the garden.", "Tomatoes were planted by her against the garden's southern wall."),
    ("The committee postponed the vote until next Thursday.", "Next Thursday is when the committee will now vote."),
    ("He forgot his umbrella and got soaked on the way home.", "Walking home without an umbrella, he was drenched."),
    ("Boil the pasta for nine minutes, then drain it.", "Cook the noodles in boiling water for nine minutes and strain."),
    ("The museum is closed on Mondays.", "You cannot visit the museum on a Monday."),
    ("A cat slept on the warm bonnet of the car.", "The kitten dozed on the heated hood of the vehicle."),
    ("The bridge was repainted last summer.", "Workers gave the bridge a fresh coat of paint a year ago."),
    ("Prices at the bakery went up again this month.", "The bakery raised its prices once more this month."),
    ("The child could not find her left shoe.", "The little girl was missing one of her shoes."),
    ("The orchestra tuned their instruments before the concert.", "Before the performance the musicians tuned up."),
    ("My laptop battery no longer holds a charge.", "The battery in my notebook computer dies immediately now."),
    ("The river flooded the lower fields after the storm.", "After heavy rain the low meadows were under water."),
    ("He is learning to play the cello.", "He takes lessons on a string instrument."),
    ("The library extended its opening hours.", "The bookshop down the road sells second-hand novels."),
    ("Our flight was cancelled because of fog.", "Airports sometimes struggle in bad weather."),
    ("She runs five kilometres every morning.", "Regular exercise is good for the heart."),
    ("The soup needs more salt.", "The chef tasted the sauce and frowned."),
    ("A new school is being built near the station.", "The station car park is always full."),
    ("He painted the fence green.", "The neighbours' fence is made of wood."),
    ("The recipe calls for three eggs.", "Chickens lay more eggs in spring."),
    ("The match was decided by a late penalty.", "Football fans travelled from across the country."),
    ("The printer has run out of ink.", "Please send the report by email instead."),
    ("Bees were buzzing around the lavender.", "The garden smelled of summer flowers."),
    ("The glacier has retreated two kilometres since 1950.", "She ordered a cappuccino with oat milk."),
    ("Quarterly revenue rose by eight percent.", "The dog chased a squirrel up the oak tree."),
    ("Please tighten the bolts on the rear wheel.", "Medieval monks copied manuscripts by hand."),
    ("The violinist bowed to the audience.", "Interest rates were left unchanged."),
    ("Mix the cement with sand and water.", "Jupiter has dozens of known moons."),
    ("The toddler giggled at the puppet show.", "Tax returns are due at the end of January."),
    ("The ferry crosses the strait twice a day.", "A spreadsheet formula returned an error."),
    ("Snow fell softly over the empty square.", "The software update fixed a memory leak."),
    ("The lawyer read the contract twice.", "Penguins huddle together to keep warm."),
    ("A hedgehog crossed the lane at dusk.", "The central bank published its annual report."),
    ("They repaired the roof before winter.", "The poem has fourteen lines and a final couplet."),
    ("The baby finally fell asleep.", "The server migration finished overnight."),
)
