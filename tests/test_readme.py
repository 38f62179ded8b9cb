"""The README's numbers stay true: every percentage and run time written outside the runner's
generated blocks is a value of a committed run in `results/` (so a re-measured result cannot leave
a stale number behind), and every generated block names a committed output."""
import glob
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"<!-- experiments:(\S+) -->.*?<!-- /experiments -->", re.S)
PERCENT = re.compile(r"(?<![\d.])(\d{1,3}\.\d{2}) %")
DURATION = re.compile(r"(?:(\d+) h )?(\d+) min\b")


def committed_values() -> tuple:
    """(percentages as 2-decimal strings, wall times in whole minutes) of every committed run."""
    percents, minutes = set(), set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, float) and 0 <= node <= 1:
            percents.add(f"{100 * node:.2f}")

    for path in glob.glob(os.path.join(REPO, "results", "*", "runs", "*.json")):
        results = json.load(open(path))["results"]
        for split in ("dev", "test", "dev_posthoc_ts", "test_posthoc_ts"):
            walk(results.get(split, {}))
        if results.get("wall_time_s"):
            minutes.add(int(results["wall_time_s"] // 60))
    return percents, minutes


def readme_prose() -> str:
    return BLOCK.sub("", open(os.path.join(REPO, "README.md")).read())


def stray_numbers(text: str) -> list:
    percents, minutes = committed_values()
    stray = [f"{p} %" for p in PERCENT.findall(text) if p not in percents]
    for hours, mins in DURATION.findall(text):
        total = 60 * int(hours or 0) + int(mins)
        if total >= 10 and total not in minutes:       # "< 1 min" style bounds are not measurements
            stray.append(f"{hours + ' h ' if hours else ''}{mins} min")
    return stray


def test_readme_numbers_come_from_committed_results():
    assert stray_numbers(readme_prose()) == []


def test_a_number_not_in_the_results_is_caught():
    assert stray_numbers("test accuracy 65.98 %, in 1 h 27 min") == ["65.98 %", "1 h 27 min"]


def test_generated_blocks_name_committed_outputs():
    text = open(os.path.join(REPO, "README.md")).read()
    names = re.findall(r"<!-- experiments:(\S+) -->", text)
    assert names, "the README has no generated status block"
    for name in names:
        assert os.path.isfile(os.path.join(REPO, "results", name + ".json")), name
