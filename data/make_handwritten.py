"""Hand-written unit-conversion evaluation set (generalisation check).

This file holds unit-conversion questions written BY HAND, phrased the way
people type them into search boxes, forums, homework, recipes and so on.  They
were written independently of the project's question generator (its code,
phrasings and templates were not looked at).  The set exists only to check
whether a model fine-tuned on *generated* questions generalises to real-world
wording.  It must NEVER be used for training, tuning, prompt selection,
checkpoint selection or any other fitting step.

Running ``python data/make_handwritten.py`` (from the repo root) computes every
answer with pint, cross-checks it against an independent hand-typed factor
table (below), exits nonzero if anything disagrees by more than 1e-6 relative,
and writes ``data/handwritten.jsonl`` (one object per line:
``{"question", "answer", "pint"}``) in the order written here.

Conventions followed by every answer:
  * gallon, quart, pint, cup, fluid ounce, tablespoon, teaspoon are US
    customary liquid measures (pint's defaults); imperial/UK gallon only when
    the question says so (``imperial_gallon``).
  * ton alone = metric tonne (1000 kg, ``metric_ton``), the project's default
    reading (docs/data.md, "Conventions": every one of 20 people who wrote
    "ton" alone meant 1000 kg); US short ton (2000 lb, pint ``ton``) only when
    the question says "US ton" or "short ton"; long ton only when it says "long ton".
  * year = 365.25 days (pint ``year``), month = year/12 (pint ``month``),
    week = 7 days, decade = 10 years, century = 100 years.  pint's own
    ``decade`` is a logarithmic unit, so this script defines
    ``decade_10y = 10 * year`` and ``century_100y = 100 * year``.
  * calorie = 4.184 J (pint ``calorie``), kilocalorie = 4184 J; food energy is
    always written as kcal/kilocalories; Btu = pint ``Btu`` (1055.056 J).
  * kB/KB/kilobyte = 1000 bytes, MB = 1e6, GB = 1e9, TB = 1e12 bytes;
    KiB/MiB/GiB/TiB are 1024-based; bit = 1/8 byte; megabit = 1e6 bits.
  * acre = international acre = 43560 sq ft.  pint's ``acre`` is the US survey
    acre, so this script defines ``international_acre = 43560 * square_foot``.
  * mile = 1609.344 m; knot = 1852 m/h; psi = lbf/in^2; atm = 101325 Pa;
    bar = 1e5 Pa; mmHg, inHg and torr as pint defines them.
  * Temperatures are absolute readings (20 degC -> 68 degF), not differences;
    computed as ``ureg.Quantity(value, ureg.degC).to(...)``.

The "pint" field records exactly what was computed: "<value> <pint unit> ->
<pint unit>", using the three extra unit definitions above where needed.
"""

import json
import math
import re
import sys
from pathlib import Path

import pint

# --------------------------------------------------------------------------
# Questions: (question, value as written, from unit, to unit), by family.
# Unit strings are pint unit expressions (plus the three defined below).
# --------------------------------------------------------------------------

LENGTH = [
    ("how many feet is 3 meters", 3, "meter", "foot"),
    ("5 miles in km", 5, "mile", "kilometer"),
    ("convert 170 cm to inches", 170, "centimeter", "inch"),
    ("I'm 6 feet tall. What is that in metres?", 6, "foot", "meter"),
    ("26.2 miles to kilometers", 26.2, "mile", "kilometer"),
    ("km to miles, 42.195 km?", 42.195, "kilometer", "mile"),
    ("whats 250 yards in meters", 250, "yard", "meter"),
    ("How many inches are in 2.5 feet?", 2.5, "foot", "inch"),
    ("my tv is 55 inches, how many cm is that", 55, "inch", "centimeter"),
    ("Convert 12 mm to inches", 12, "millimeter", "inch"),
    ("The trail is 8 km long. How far is that in miles?", 8, "kilometer", "mile"),
    ("how long is 100 yards in feet", 100, "yard", "foot"),
    ("1,500 m to miles", 1500, "meter", "mile"),
    ("how many millimetres in 3.5 inches", 3.5, "inch", "millimeter"),
    ("I need 4.5 m of fabric, how many yards should I buy?", 4.5, "meter", "yard"),
    ("convert 0.75 mile to feet", 0.75, "mile", "foot"),
    ("30 cm in feet", 30, "centimeter", "foot"),
    ("How many kilometres is 500 miles?", 500, "mile", "kilometer"),
    ("A board is 8 ft long. What's the length in centimetres?", 8, "foot", "centimeter"),
    ("what's 5280 feet in km", 5280, "foot", "kilometer"),
    ("how many meters is 400 yards", 400, "yard", "meter"),
    ("feet to metres for 14 feet?", 14, "foot", "meter"),
    ("2 km to ft", 2, "kilometer", "foot"),
    ("how many cm in 18 inches", 18, "inch", "centimeter"),
    ("Convert 5,000 ft to miles please", 5000, "foot", "mile"),
    ("what is 0.5 mm in inches", 0.5, "millimeter", "inch"),
    ("my daily walk is 3 miles, how many metres is that?", 3, "mile", "meter"),
    ("100 microns to inches", 100, "micrometer", "inch"),
    ("Convert 65 inches to meters", 65, "inch", "meter"),
]

MASS = [
    ("my suitcase weighs 23 kg, how many pounds is that?", 23, "kilogram", "pound"),
    ("convert 12 stone to kg", 12, "stone", "kilogram"),
    ("how many grams in 8 oz", 8, "ounce", "gram"),
    ("150 lbs in kg", 150, "pound", "kilogram"),
    ("whats 500 g in pounds", 500, "gram", "pound"),
    ("How many ounces is 1 kilogram?", 1, "kilogram", "ounce"),
    ("I weigh 11 stone, what's that in lbs", 11, "stone", "pound"),
    ("how many mg in 0.5 grams", 0.5, "gram", "milligram"),
    ("a tablet has 325 mg of aspirin, how many grams is that", 325, "milligram", "gram"),
    ("how many tonnes is 3 tons", 3, "metric_ton", "metric_ton"),
    ("convert 2.5 metric tons to pounds", 2.5, "metric_ton", "pound"),
    ("4,000 lb to tons", 4000, "pound", "metric_ton"),
    ("How many kgs is 180 lbs?", 180, "pound", "kilogram"),
    ("The baby weighed 3.4 kg at birth. What is that in pounds?", 3.4, "kilogram", "pound"),
    ("how many oz in 2 lbs", 2, "pound", "ounce"),
    ("75 kg to stone", 75, "kilogram", "stone"),
    ("kg to lbs: 72 kg", 72, "kilogram", "pound"),
    ("10 tonnes in kg", 10, "metric_ton", "kilogram"),
    ("How many pounds are in 1.5 tons?", 1.5, "metric_ton", "pound"),
    ("250 grams of butter in ounces", 250, "gram", "ounce"),
    ("what's 1 long ton in kg", 1, "long_ton", "kilogram"),
    ("5 kg to oz", 5, "kilogram", "ounce"),
    ("A truck can carry 20 tonnes. How many US tons is that?", 20, "metric_ton", "ton"),
    ("how many grams is 0.25 lb", 0.25, "pound", "gram"),
    ("how heavy is a 45 lb plate in kilograms", 45, "pound", "kilogram"),
    ("convert 1200 mg to ounces", 1200, "milligram", "ounce"),
    ("how many pounds is 60 kilos", 60, "kilogram", "pound"),
    ("ounces to grams for 16 ounces", 16, "ounce", "gram"),
    ("my dad weighs 14.5 stone, how much is that in kilograms", 14.5, "stone", "kilogram"),
]

TIME = [
    ("how many seconds in 3 hours", 3, "hour", "second"),
    ("How many minutes is 2.5 hours?", 2.5, "hour", "minute"),
    ("90 minutes in hours", 90, "minute", "hour"),
    ("convert 10,000 seconds to hours", 10000, "second", "hour"),
    ("how many days is 1000 hours", 1000, "hour", "day"),
    ("how many weeks in 6 months", 6, "month", "week"),
    ("How many hours are in 2 weeks?", 2, "week", "hour"),
    ("What is 450 ms in seconds?", 450, "millisecond", "second"),
    ("how many days are in 3 years", 3, "year", "day"),
    ("how many years is 10,000 days", 10000, "day", "year"),
    ("how many months in 4 decades", 4, "decade_10y", "month"),
    ("How many weeks are in 1 century?", 1, "century_100y", "week"),
    ("I just turned 30 years old, how many days is that?", 30, "year", "day"),
    ("Movie runtime is 142 mins, how many hours is that", 142, "minute", "hour"),
    ("how many seconds is 1.5 days", 1.5, "day", "second"),
    ("convert 36 months to years", 36, "month", "year"),
    ("how many milliseconds in 2 minutes", 2, "minute", "millisecond"),
    ("the project takes 18 weeks, how many months is that", 18, "week", "month"),
    ("How many days in 2 decades?", 2, "decade_10y", "day"),
    ("how many hours in 45 days", 45, "day", "hour"),
    ("480 secs to mins", 480, "second", "minute"),
    ("how many minutes are there in 1 week", 1, "week", "minute"),
    ("My commute is 35 minutes each way. How many seconds is that?", 35, "minute", "second"),
    ("how many months are in 2 centuries", 2, "century_100y", "month"),
    ("8 hrs in seconds", 8, "hour", "second"),
    ("how many days is 72 hours", 72, "hour", "day"),
    ("convert 0.25 years to weeks", 0.25, "year", "week"),
    ("hours to minutes 3.25 hours", 3.25, "hour", "minute"),
    ("A lap took 1,250 milliseconds. How many seconds is that?", 1250, "millisecond", "second"),
]

VOLUME = [
    ("how many cups are in 5 quarts", 5, "quart", "cup"),
    ("recipe says 300 ml of stock, how many cups is that", 300, "milliliter", "cup"),
    ("2 liters to gallons", 2, "liter", "gallon"),
    ("How many tablespoons in 0.5 cup?", 0.5, "cup", "tablespoon"),
    ("convert 16 fl oz to mL", 16, "fluid_ounce", "milliliter"),
    ("How many teaspoons are in 3 tablespoons?", 3, "tablespoon", "teaspoon"),
    ("my car's tank holds 60 litres, how many gallons is that", 60, "liter", "gallon"),
    ("how many litres is 10 imperial gallons", 10, "imperial_gallon", "liter"),
    ("5 gallons to liters", 5, "gallon", "liter"),
    ("how many ml in 2 tsp", 2, "teaspoon", "milliliter"),
    ("1.5 L in fl oz", 1.5, "liter", "fluid_ounce"),
    ("how many fluid ounces in a 750 ml bottle", 750, "milliliter", "fluid_ounce"),
    ("how many cubic meters is 5000 liters", 5000, "liter", "meter ** 3"),
    ("my scooter has a 125cc engine, what's that in litres", 125, "cubic_centimeter", "liter"),
    ("how many pints in 2 gallons", 2, "gallon", "pint"),
    ("Convert 4 cups to mL", 4, "cup", "milliliter"),
    ("how many quarts is 3 liters", 3, "liter", "quart"),
    ("I'm filling a 20 gallon aquarium, how many litres of water do I need?", 20, "gallon", "liter"),
    ("how many US gallons in 1 UK gallon", 1, "imperial_gallon", "gallon"),
    ("15 mL to tablespoons", 15, "milliliter", "tablespoon"),
    ("how many cups is 1.5 pints", 1.5, "pint", "cup"),
    ("convert 1 cubic foot to liters", 1, "cubic_foot", "liter"),
    ("How many litres in 2.5 cubic metres?", 2.5, "meter ** 3", "liter"),
    ("a 12 fl oz can of soda is how many millilitres", 12, "fluid_ounce", "milliliter"),
    ("how many teaspoons in 100 ml", 100, "milliliter", "teaspoon"),
    ("our pool holds 15,000 gallons. how many cubic metres is that?", 15000, "gallon", "meter ** 3"),
    ("3 tbsp to ml", 3, "tablespoon", "milliliter"),
    ("how many imperial gallons is 50 litres", 50, "liter", "imperial_gallon"),
    ("gallons to litres, 12 gallons?", 12, "gallon", "liter"),
]

SPEED = [
    ("70 mph to kph", 70, "mile / hour", "kilometer / hour"),
    ("100 km/h in mph", 100, "kilometer / hour", "mile / hour"),
    ("how fast is 30 knots in mph", 30, "knot", "mile / hour"),
    ("convert 10 m/s to km/h", 10, "meter / second", "kilometer / hour"),
    ("speed limit is 50 kph, how many mph is that", 50, "kilometer / hour", "mile / hour"),
    ("what's 25 mph in meters per second", 25, "mile / hour", "meter / second"),
    ("How many feet per second is 60 mph?", 60, "mile / hour", "foot / second"),
    ("a cheetah can run 120 km/h, what's that in m/s", 120, "kilometer / hour", "meter / second"),
    ("20 knots to km/h", 20, "knot", "kilometer / hour"),
    ("convert 343 m/s to mph", 343, "meter / second", "mile / hour"),
    ("15 knots in m/s", 15, "knot", "meter / second"),
    ("my treadmill says 6.5 mph, what's that in km/h", 6.5, "mile / hour", "kilometer / hour"),
    ("wind speed 40 km/h in knots", 40, "kilometer / hour", "knot"),
    ("100 ft/s to mph", 100, "foot / second", "mile / hour"),
    ("Usain Bolt's average speed was 10.44 m/s. What is that in mph?", 10.44, "meter / second", "mile / hour"),
    ("what is 900 km/h in mph", 900, "kilometer / hour", "mile / hour"),
    ("convert 5 m/s to knots", 5, "meter / second", "knot"),
    ("how many m/s is 1 mph", 1, "mile / hour", "meter / second"),
    ("110 kmh to mph", 110, "kilometer / hour", "mile / hour"),
    ("the wind was gusting at 45 mph, what is that in km/h?", 45, "mile / hour", "kilometer / hour"),
    ("how many mph is 200 knots", 200, "knot", "mile / hour"),
    ("convert 3 km/h to ft/s", 3, "kilometer / hour", "foot / second"),
    ("A ship cruises at 22 knots. What's that in metres per second?", 22, "knot", "meter / second"),
    ("80 kph in meters per second", 80, "kilometer / hour", "meter / second"),
    ("what's 12 feet per second in km/h", 12, "foot / second", "kilometer / hour"),
    ("mph to m/s, 30 mph?", 30, "mile / hour", "meter / second"),
    ("how fast in mph is 1,000 km/h", 1000, "kilometer / hour", "mile / hour"),
    ("my bike computer shows 8 m/s how many kilometres per hour is that",
     8, "meter / second", "kilometer / hour"),
]

DATA = [
    ("how many MB in 2.5 GB", 2.5, "gigabyte", "megabyte"),
    ("1 TB to GB", 1, "terabyte", "gigabyte"),
    ("convert 512 MB to GB", 512, "megabyte", "gigabyte"),
    ("how many bytes in 64 KiB", 64, "kibibyte", "byte"),
    ("8 GiB in GB", 8, "gibibyte", "gigabyte"),
    ("how many megabits in 1 megabyte", 1, "megabyte", "megabit"),
    ("100 megabits to megabytes", 100, "megabit", "megabyte"),
    ("How many bits are in 32 bytes?", 32, "byte", "bit"),
    ("convert 2048 KiB to MiB", 2048, "kibibyte", "mebibyte"),
    ("how many kB is 3.5 MB", 3.5, "megabyte", "kilobyte"),
    ("my new 500 GB hard drive shows up as how many GiB?", 500, "gigabyte", "gibibyte"),
    ("how many MiB in 1 GB", 1, "gigabyte", "mebibyte"),
    ("1,024 bytes to kB", 1024, "byte", "kilobyte"),
    ("how many TB is 6,000 GB", 6000, "gigabyte", "terabyte"),
    ("How many gigabits in 1.5 gigabytes?", 1.5, "gigabyte", "gigabit"),
    ("convert 250 kB to bits", 250, "kilobyte", "bit"),
    ("16 GiB in MB", 16, "gibibyte", "megabyte"),
    ("The photo is 3,200 KB. How many MB is it?", 3200, "kilobyte", "megabyte"),
    ("how many MB is 750 megabits", 750, "megabit", "megabyte"),
    ("how many GB is 128,000 MB", 128000, "megabyte", "gigabyte"),
    ("convert 4 TB to TiB", 4, "terabyte", "tebibyte"),
    ("How many kilobytes in 1 MiB?", 1, "mebibyte", "kilobyte"),
    ("the email attachment limit is 25 MB, how many KB is that", 25, "megabyte", "kilobyte"),
    ("how many bytes is 1.5 MB", 1.5, "megabyte", "byte"),
    ("2 kilobits in bytes", 2, "kilobit", "byte"),
    ("how many GiB is 256 GB", 256, "gigabyte", "gibibyte"),
    ("300 MB to GiB", 300, "megabyte", "gibibyte"),
    ("GB to MB for 0.8 GB", 0.8, "gigabyte", "megabyte"),
    ("a game update is 45 GB, how many megabits is that", 45, "gigabyte", "megabit"),
]

AREA = [
    ("how many square feet is 50 m2", 50, "meter ** 2", "square_foot"),
    ("convert 2 acres to hectares", 2, "international_acre", "hectare"),
    ("1,200 sq ft in m²", 1200, "square_foot", "meter ** 2"),
    ("how many acres in 1 square mile", 1, "square_mile", "international_acre"),
    ("10 hectares to acres", 10, "hectare", "international_acre"),
    ("What's 100 ft² in m²?", 100, "square_foot", "meter ** 2"),
    ("how many square inches are in 3 square feet", 3, "square_foot", "square_inch"),
    ("convert 5 km² to square miles", 5, "kilometer ** 2", "square_mile"),
    ("how many square yards is 20 square meters", 20, "meter ** 2", "square_yard"),
    ("our apartment is 75 sqm, how many sq ft is that", 75, "meter ** 2", "square_foot"),
    ("how many cm^2 in 1.5 m^2", 1.5, "meter ** 2", "centimeter ** 2"),
    ("a farm of 300 acres is how many km²", 300, "international_acre", "kilometer ** 2"),
    ("0.5 hectare in square metres", 0.5, "hectare", "meter ** 2"),
    ("How many square feet in 0.25 acres?", 0.25, "international_acre", "square_foot"),
    ("the room is 16 sq yd, how many sq ft", 16, "square_yard", "square_foot"),
    ("convert 40 square inches to square cm", 40, "square_inch", "centimeter ** 2"),
    ("how many hectares is 1 square kilometre", 1, "kilometer ** 2", "hectare"),
    ("The island covers 59 km². How big is that in square miles?", 59, "kilometer ** 2", "square_mile"),
    ("how many acres is 5,000 square meters", 5000, "meter ** 2", "international_acre"),
    ("500 sq ft to sq m", 500, "square_foot", "meter ** 2"),
    ("623.7 cm² in square inches", 623.7, "centimeter ** 2", "square_inch"),
    ("how many square metres in 1 acre", 1, "international_acre", "meter ** 2"),
    ("3 sq mi to hectares", 3, "square_mile", "hectare"),
    ("how many square millimetres in 2 square inches", 2, "square_inch", "millimeter ** 2"),
    ("convert 40,000 sq ft to acres", 40000, "square_foot", "international_acre"),
    ("how many m² is 12 square yards", 12, "square_yard", "meter ** 2"),
    ("acres to sq ft, 2.5 acres", 2.5, "international_acre", "square_foot"),
    ("I'm tiling a 9 m^2 bathroom floor, how many square feet of tile is that",
     9, "meter ** 2", "square_foot"),
]

TEMPERATURE = [
    ("100 °F to °C", 100, "degF", "degC"),
    ("what is 20 degrees celsius in fahrenheit", 20, "degC", "degF"),
    ("convert -40 C to F", -40, "degC", "degF"),
    ("the oven says 350 F, what's that in Celsius", 350, "degF", "degC"),
    ("how many kelvin is 25 °C", 25, "degC", "kelvin"),
    ("body temp 98.6 F in C", 98.6, "degF", "degC"),
    ("it's -10 degrees celsius outside, what is that in fahrenheit", -10, "degC", "degF"),
    ("0 K in celsius", 0, "kelvin", "degC"),
    ("convert 300 kelvin to fahrenheit", 300, "kelvin", "degF"),
    ("180 deg C to deg F", 180, "degC", "degF"),
    ("what's 72 degrees F in celsius", 72, "degF", "degC"),
    ("Water boils at 212°F. What is that in kelvin?", 212, "degF", "kelvin"),
    ("my kid has a 38.5 C fever, what is that in fahrenheit", 38.5, "degC", "degF"),
    ("5 degF in degC", 5, "degF", "degC"),
    ("liquid nitrogen is 77 K, how cold is that in C", 77, "kelvin", "degC"),
    ("Convert 15 degrees Celsius to Kelvin", 15, "degC", "kelvin"),
    ("it's 85 degrees fahrenheit today, how hot is that in celsius", 85, "degF", "degC"),
    ("220 celsius to fahrenheit", 220, "degC", "degF"),
    ("-20 °F in °C", -20, "degF", "degC"),
    ("what is 500 K in °F", 500, "kelvin", "degF"),
    ("freezer is set to -18 C, what's that in F", -18, "degC", "degF"),
    ("convert 0 fahrenheit to kelvin", 0, "degF", "kelvin"),
    ("what is 40 °C in Fahrenheit", 40, "degC", "degF"),
    ("green tea should be brewed at 80 C, what is that in F?", 80, "degC", "degF"),
    ("1000 °C to K", 1000, "degC", "kelvin"),
    ("what temperature in celsius is 451 fahrenheit", 451, "degF", "degC"),
    ("celsius to fahrenheit 30 degrees", 30, "degC", "degF"),
    ("The lab fridge is at 277.15 K. What is that in degrees Celsius?", 277.15, "kelvin", "degC"),
]

ENERGY = [
    ("how many kJ in 250 kcal", 250, "kilocalorie", "kilojoule"),
    ("convert 2000 kilocalories to kilojoules", 2000, "kilocalorie", "kilojoule"),
    ("how many joules in 5 calories", 5, "calorie", "joule"),
    ("1 kWh in MJ", 1, "kilowatt_hour", "megajoule"),
    ("how many BTUs in 2.5 kWh", 2.5, "kilowatt_hour", "Btu"),
    ("a snack bar has 840 kJ, how many kcal is that", 840, "kilojoule", "kilocalorie"),
    ("convert 12,000 BTU to kWh", 12000, "Btu", "kilowatt_hour"),
    ("how many Wh in 5 kJ", 5, "kilojoule", "watt_hour"),
    ("my phone battery is 15 Wh, how many joules is that", 15, "watt_hour", "joule"),
    ("100 kcal in joules", 100, "kilocalorie", "joule"),
    ("chemistry homework: how many calories is 2 kJ?", 2, "kilojoule", "calorie"),
    ("convert 50 MJ to kWh", 50, "megajoule", "kilowatt_hour"),
    ("how many kWh is 100,000 BTU", 100000, "Btu", "kilowatt_hour"),
    ("How many kcal are in 1 MJ?", 1, "megajoule", "kilocalorie"),
    ("500 J to cal", 500, "joule", "calorie"),
    ("30,000 BTU to MJ", 30000, "Btu", "megajoule"),
    ("the heater used 3 kWh, how many kJ is that", 3, "kilowatt_hour", "kilojoule"),
    ("How many joules is 0.5 Wh?", 0.5, "watt_hour", "joule"),
    ("my watch says I burned 1500 kJ, how many kcal is that", 1500, "kilojoule", "kilocalorie"),
    ("convert 75 kilocalories to BTU", 75, "kilocalorie", "Btu"),
    ("how many btu in 1 megajoule", 1, "megajoule", "Btu"),
    ("2.5 MJ to Wh", 2.5, "megajoule", "watt_hour"),
    ("how many Wh in 0.75 kWh", 0.75, "kilowatt_hour", "watt_hour"),
    ("convert 400 cal to J", 400, "calorie", "joule"),
    ("how many megajoules in 200 kWh", 200, "kilowatt_hour", "megajoule"),
    ("how many kilojoules is 1,000 Btu", 1000, "Btu", "kilojoule"),
    ("850 kJ in Wh", 850, "kilojoule", "watt_hour"),
    ("kJ to kcal: 2000 kJ", 2000, "kilojoule", "kilocalorie"),
    ("how many watt hours is 3,000 joules", 3000, "joule", "watt_hour"),
]

PRESSURE = [
    ("32 psi to bar", 32, "psi", "bar"),
    ("my tyres need 2.2 bar, what's that in psi", 2.2, "bar", "psi"),
    ("how many pascals is 2 atm", 2, "atmosphere", "pascal"),
    ("convert 1013 hPa to mmHg", 1013, "hectopascal", "millimeter_Hg"),
    ("120 mmHg in kPa", 120, "millimeter_Hg", "kilopascal"),
    ("how many psi is 1 atmosphere", 1, "atmosphere", "psi"),
    ("what is 760 torr in atm", 760, "torr", "atmosphere"),
    ("100 kPa to psi", 100, "kilopascal", "psi"),
    ("convert 30 inHg to hPa", 30, "inch_Hg", "hectopascal"),
    ("how many bar is 3000 psi", 3000, "psi", "bar"),
    ("1.5 bar in kPa", 1.5, "bar", "kilopascal"),
    ("air pressure is 980 mbar, what's that in atm", 980, "millibar", "atmosphere"),
    ("how many mmHg is 1 kPa", 1, "kilopascal", "millimeter_Hg"),
    ("the scuba tank is at 200 bar, how many psi is that", 200, "bar", "psi"),
    ("convert 50 Pa to mbar", 50, "pascal", "millibar"),
    ("how many torr in 0.5 atm", 0.5, "atmosphere", "torr"),
    ("2 atm to bar", 2, "atmosphere", "bar"),
    ("what is 14.7 psi in hPa", 14.7, "psi", "hectopascal"),
    ("convert 80 mmHg to psi", 80, "millimeter_Hg", "psi"),
    ("45 psi in kPa", 45, "psi", "kilopascal"),
    ("how many atmospheres is 10 MPa", 10, "megapascal", "atmosphere"),
    ("the barometer reads 1020 millibars, how many inches of mercury is that",
     1020, "millibar", "inch_Hg"),
    ("How many Pa in 5 torr?", 5, "torr", "pascal"),
    ("convert 0.8 bar to mmHg", 0.8, "bar", "millimeter_Hg"),
    ("how many kPa is 250 hPa", 250, "hectopascal", "kilopascal"),
    ("What's 1 bar in atm?", 1, "bar", "atmosphere"),
    ("psi to bar for 35 psi", 35, "psi", "bar"),
    ("my pressure cooker runs at 103 kPa, how many psi is that?", 103, "kilopascal", "psi"),
]

FAMILIES = {
    "length": LENGTH,
    "mass": MASS,
    "time": TIME,
    "volume": VOLUME,
    "speed": SPEED,
    "data": DATA,
    "area": AREA,
    "temperature": TEMPERATURE,
    "energy": ENERGY,
    "pressure": PRESSURE,
}

# --------------------------------------------------------------------------
# Independent cross-check table: value of one unit in SI base units
# (m, kg, s, m^3, m/s, bit, m^2, J, Pa), typed by hand from the definitions.
# --------------------------------------------------------------------------

INCH = 0.0254
FOOT = 0.3048
YARD = 0.9144
MILE = 1609.344
POUND = 0.45359237
G0 = 9.80665
US_GALLON = 231 * INCH**3          # 231 cubic inches
FL_OZ = US_GALLON / 128
DAY = 86400.0
YEAR = 365.25 * DAY

SI = {
    # length (m)
    "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2, "meter": 1.0,
    "kilometer": 1e3, "inch": INCH, "foot": FOOT, "yard": YARD, "mile": MILE,
    # mass (kg)
    "milligram": 1e-6, "gram": 1e-3, "kilogram": 1.0, "metric_ton": 1000.0,
    "pound": POUND, "ounce": POUND / 16, "stone": 14 * POUND,
    "ton": 2000 * POUND, "long_ton": 2240 * POUND,
    # time (s)
    "millisecond": 1e-3, "second": 1.0, "minute": 60.0, "hour": 3600.0,
    "day": DAY, "week": 7 * DAY, "month": YEAR / 12, "year": YEAR,
    "decade_10y": 10 * YEAR, "century_100y": 100 * YEAR,
    # volume (m^3)
    "milliliter": 1e-6, "cubic_centimeter": 1e-6, "liter": 1e-3, "meter ** 3": 1.0,
    "gallon": US_GALLON, "quart": US_GALLON / 4, "pint": US_GALLON / 8,
    "cup": US_GALLON / 16, "fluid_ounce": FL_OZ, "tablespoon": FL_OZ / 2,
    "teaspoon": FL_OZ / 6, "imperial_gallon": 4.54609e-3, "cubic_foot": FOOT**3,
    # speed (m/s)
    "meter / second": 1.0, "kilometer / hour": 1000 / 3600, "mile / hour": MILE / 3600,
    "knot": 1852 / 3600, "foot / second": FOOT,
    # data (bit)
    "bit": 1, "byte": 8, "kilobit": 1e3, "megabit": 1e6, "gigabit": 1e9,
    "kilobyte": 8e3, "megabyte": 8e6, "gigabyte": 8e9, "terabyte": 8e12,
    "kibibyte": 8 * 2**10, "mebibyte": 8 * 2**20, "gibibyte": 8 * 2**30,
    "tebibyte": 8 * 2**40,
    # area (m^2)
    "millimeter ** 2": 1e-6, "centimeter ** 2": 1e-4, "meter ** 2": 1.0,
    "kilometer ** 2": 1e6, "hectare": 1e4, "square_inch": INCH**2,
    "square_foot": FOOT**2, "square_yard": YARD**2, "square_mile": MILE**2,
    "international_acre": 43560 * FOOT**2,
    # energy (J)
    "joule": 1.0, "kilojoule": 1e3, "megajoule": 1e6, "calorie": 4.184,
    "kilocalorie": 4184.0, "watt_hour": 3600.0, "kilowatt_hour": 3.6e6,
    "Btu": 1055.056,
    # pressure (Pa)
    "pascal": 1.0, "hectopascal": 100.0, "kilopascal": 1e3, "megapascal": 1e6,
    "millibar": 100.0, "bar": 1e5, "atmosphere": 101325.0,
    "psi": POUND * G0 / INCH**2, "torr": 101325 / 760,
    "millimeter_Hg": 13595.1 * G0 * 1e-3,   # 13.5951 g/cm^3 mercury column
    "inch_Hg": 13595.1 * G0 * INCH,
}

DIM = {}
for _fam, _units in {
    "length": ["micrometer", "millimeter", "centimeter", "meter", "kilometer", "inch",
               "foot", "yard", "mile"],
    "mass": ["milligram", "gram", "kilogram", "metric_ton", "pound", "ounce", "stone",
             "ton", "long_ton"],
    "time": ["millisecond", "second", "minute", "hour", "day", "week", "month", "year",
             "decade_10y", "century_100y"],
    "volume": ["milliliter", "cubic_centimeter", "liter", "meter ** 3", "gallon", "quart",
               "pint", "cup", "fluid_ounce", "tablespoon", "teaspoon", "imperial_gallon",
               "cubic_foot"],
    "speed": ["meter / second", "kilometer / hour", "mile / hour", "knot", "foot / second"],
    "data": ["bit", "byte", "kilobit", "megabit", "gigabit", "kilobyte", "megabyte",
             "gigabyte", "terabyte", "kibibyte", "mebibyte", "gibibyte", "tebibyte"],
    "area": ["millimeter ** 2", "centimeter ** 2", "meter ** 2", "kilometer ** 2",
             "hectare", "square_inch", "square_foot", "square_yard", "square_mile",
             "international_acre"],
    "energy": ["joule", "kilojoule", "megajoule", "calorie", "kilocalorie", "watt_hour",
               "kilowatt_hour", "Btu"],
    "pressure": ["pascal", "hectopascal", "kilopascal", "megapascal", "millibar", "bar",
                 "atmosphere", "psi", "torr", "millimeter_Hg", "inch_Hg"],
}.items():
    for _u in _units:
        DIM[_u] = _fam
assert set(DIM) == set(SI)


def to_kelvin(value, unit):
    if unit == "kelvin":
        return value
    if unit == "degC":
        return value + 273.15
    if unit == "degF":
        return (value - 32) * 5 / 9 + 273.15
    raise KeyError(unit)


def from_kelvin(k, unit):
    if unit == "kelvin":
        return k
    if unit == "degC":
        return k - 273.15
    if unit == "degF":
        return (k - 273.15) * 9 / 5 + 32
    raise KeyError(unit)


def hand_answer(value, src, dst):
    if src in ("degC", "degF", "kelvin"):
        return from_kelvin(to_kelvin(value, src), dst)
    if DIM[src] != DIM[dst]:
        raise ValueError(f"dimension mismatch {src} -> {dst}")
    return value * SI[src] / SI[dst]


# --------------------------------------------------------------------------
# pint computation
# --------------------------------------------------------------------------

ureg = pint.UnitRegistry()
ureg.define("international_acre = 43560 * square_foot")
ureg.define("decade_10y = 10 * year")
ureg.define("century_100y = 100 * year")


def pint_answer(value, src, dst):
    q = ureg.Quantity(value, ureg.Unit(src))   # offset units stay absolute readings
    return float(q.to(ureg.Unit(dst)).magnitude)


# numbers written with digits, not part of a unit token like "m2", "cm^2", "125cc"'s unit
NUM_RE = re.compile(r"(?<![A-Za-z^\d.,])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![A-Za-z^\d.,])-?\d+(?:\.\d+)?")


def numbers_in(question):
    return [float(m.replace(",", "")) for m in NUM_RE.findall(question)]


def _same_rows(committed: str, rows: list[dict]) -> bool:
    """Same questions, conversions and answers (to 1e-12 relative: pint versions differ in the last bits)."""
    old = [json.loads(line) for line in committed.splitlines() if line.strip()]
    return len(old) == len(rows) and all(
        a["question"] == b["question"] and a["pint"] == b["pint"] and math.isclose(a["answer"], b["answer"], rel_tol=1e-12, abs_tol=1e-12)
        for a, b in zip(old, rows)
    )


def main():
    errors = []
    rows = []
    seen_triples = set()
    seen_text = set()
    for family, items in FAMILIES.items():
        if len(items) < 20:
            errors.append(f"{family}: only {len(items)} questions")
        for question, value, src, dst in items:
            where = f"[{family}] {question!r}"
            nums = numbers_in(question)
            if len(nums) != 1 or nums[0] != float(value):
                errors.append(f"{where}: numbers found {nums}, expected [{value}]")
            triple = (float(value), src, dst)
            if triple in seen_triples:
                errors.append(f"{where}: duplicate conversion {triple}")
            seen_triples.add(triple)
            norm = re.sub(r"[^a-z0-9]+", " ", question.lower()).strip()
            if norm in seen_text:
                errors.append(f"{where}: duplicate text")
            seen_text.add(norm)
            is_temp = family == "temperature"
            if is_temp != (src in ("degC", "degF", "kelvin")):
                errors.append(f"{where}: family/unit mismatch")
            if not is_temp and (DIM.get(src) != family or DIM.get(dst) != family):
                errors.append(f"{where}: unit not in family {family}")
            try:
                got = pint_answer(value, src, dst)
                ref = hand_answer(value, src, dst)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            scale = max(abs(ref), 1.0) if is_temp else abs(ref)
            if not math.isfinite(got) or abs(got - ref) > 1e-6 * scale:
                errors.append(f"{where}: pint {got!r} != hand table {ref!r}")
            if not is_temp and not (1e-3 <= abs(got) <= 1e7):
                errors.append(f"{where}: answer {got!r} out of readable range")
            if is_temp and abs(got) > 1e7:
                errors.append(f"{where}: answer {got!r} out of range")
            rows.append({"question": question, "answer": got,
                         "pint": f"{value} {src} -> {dst}"})
    if errors:
        for e in errors:
            print("ERROR:", e, file=sys.stderr)
        print(f"FAILED: {len(errors)} problem(s)", file=sys.stderr)
        sys.exit(1)
    out = Path(__file__).resolve().parent / "handwritten.jsonl"
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if "--check" in sys.argv[1:]:  # CI: the committed file is what this script computes
        if not _same_rows(out.read_text(encoding="utf-8"), rows):
            print(f"FAILED: {out} differs from what this script computes; rerun it without --check", file=sys.stderr)
            sys.exit(1)
        print(f"cross-check passed and {out} is up to date ({len(rows)} questions)")
        return
    with open(out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    counts = {fam: len(items) for fam, items in FAMILIES.items()}
    print(f"cross-check passed: {len(rows)} questions written to {out}")
    print("per family:", counts)


if __name__ == "__main__":
    main()
