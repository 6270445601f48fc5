"""Prompts for text-to-video evaluation: a prompts file, or UCF-101's class names (zero-shot
UCF-101, paper Tab. 5: a text-to-video model prompted with the 101 action names, its videos
scored with FVD and IS against UCF-101)."""

from __future__ import annotations

import re
from pathlib import Path

# UCF-101's 101 action classes, in the order of its classInd.txt
UCF101_CLASSES = (
    "ApplyEyeMakeup ApplyLipstick Archery BabyCrawling BalanceBeam BandMarching BaseballPitch Basketball "
    "BasketballDunk BenchPress Biking Billiards BlowDryHair BlowingCandles BodyWeightSquats Bowling "
    "BoxingPunchingBag BoxingSpeedBag BreastStroke BrushingTeeth CleanAndJerk CliffDiving CricketBowling "
    "CricketShot CuttingInKitchen Diving Drumming Fencing FieldHockeyPenalty FloorGymnastics FrisbeeCatch "
    "FrontCrawl GolfSwing Haircut Hammering HammerThrow HandstandPushups HandstandWalking HeadMassage "
    "HighJump HorseRace HorseRiding HulaHoop IceDancing JavelinThrow JugglingBalls JumpingJack JumpRope "
    "Kayaking Knitting LongJump Lunges MilitaryParade Mixing MoppingFloor Nunchucks ParallelBars "
    "PizzaTossing PlayingCello PlayingDaf PlayingDhol PlayingFlute PlayingGuitar PlayingPiano PlayingSitar "
    "PlayingTabla PlayingViolin PoleVault PommelHorse PullUps Punch PushUps Rafting RockClimbingIndoor "
    "RopeClimbing Rowing SalsaSpin ShavingBeard Shotput SkateBoarding Skiing Skijet SkyDiving "
    "SoccerJuggling SoccerPenalty StillRings SumoWrestling Surfing Swing TableTennisShot TaiChi "
    "TennisSwing ThrowDiscus TrampolineJumping Typing UnevenBars VolleyballSpiking WalkingWithDog "
    "WallPushups WritingOnBoard YoYo"
).split()

DEFAULT_TEMPLATE = "{}"  # the class name in words; e.g. "a video of a person doing {}"


def class_words(name: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo'."""
    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", name))


def ucf101_prompts(template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per UCF-101 class, in class order: `template` with the class name in words."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} needs a {{}} where the class name goes")
    return [template.format(class_words(c)) for c in UCF101_CLASSES]


def load_prompts(source: str, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """`ucf101` (the class names through `template`), or a text file with one prompt per line
    (blank lines and lines starting with # are skipped)."""
    if source == "ucf101":
        return ucf101_prompts(template)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"--prompts {source}: no such file; give a text file with one prompt per line, or ucf101"
        )
    prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts in it; write one prompt per line")
    return prompts
