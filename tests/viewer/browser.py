"""Run ``drive_ohif.mjs`` (playwright-core driving Debian's chromium) from pytest.

The Node script does the clicking and reports what it saw as JSON; the Python side
plans the steps and asserts. Every run is bounded: the script's own per-action timeout,
and a wall-clock limit on the subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
OHIF_DIST = NODE_MODULES / "@ohif" / "app" / "dist"
DRIVER = HERE / "drive_ohif.mjs"
CHROMIUM = Path("/usr/bin/chromium")
ACTION_TIMEOUT_S = 45.0
RUN_TIMEOUT_S = 240.0

# Where the page shows what: the active viewport (image, SR regions and labels), its
# top-left overlay (series description) and the right panel (segments).
VIEWPORT = '[data-cy="viewport-pane"]'
SECOND_VIEWPORT = f"{VIEWPORT} >> nth=1"
SIDE_BY_SIDE = "Layout-1-0"
VIEWPORT_TITLE = '[data-cy="viewport-overlay-top-left"]'
RIGHT_PANEL = "#viewerLayoutResizableRightPanel"
SEGMENTATION_PANEL_BUTTON = "panelSegmentation-btn"
_ALARMING = ("warning", "error")


def missing_tools() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if not (OHIF_DIST / "index.html").exists() or not (NODE_MODULES / "playwright-core").exists():
        return f"OHIF and playwright-core are not installed in {NODE_MODULES} (npm ci)"
    return None


@dataclass(frozen=True)
class Step:
    """Open one series from the study browser and wait for texts to show.

    ``series`` picks the thumbnail by its text (the series description); ``expect`` are
    texts that must become visible inside ``within`` (a playwright selector); ``confirm``
    is a button to press if it shows; ``panel`` a side panel button (data-cy) to click;
    ``layout`` a viewport grid (data-cy in the Layout menu) and ``viewport`` the 0-based
    viewport to make active before the series is opened.
    """

    name: str
    series: str
    expect: list[str] = field(default_factory=list)
    within: str | None = None
    confirm: str | None = None
    panel: str | None = None
    layout: str | None = None
    viewport: int | None = None


@dataclass(frozen=True)
class TextBox:
    """An SVG text (e.g. an SR label box) and where it was drawn, in page pixels."""

    text: str
    left: float
    top: float
    right: float
    bottom: float

    def overlaps(self, other: TextBox) -> bool:
        return (
            self.left < other.right
            and other.left < self.right
            and self.top < other.bottom
            and other.top < self.bottom
        )


@dataclass(frozen=True)
class StepSeen:
    """What the page showed after a step."""

    name: str
    found: list[str]
    missing: list[str]
    text_boxes: list[TextBox]
    screenshot: Path
    viewport_screenshot: Path

    def overlapping_texts(self) -> list[tuple[str, str]]:
        """Pairs of texts drawn over each other (unreadable)."""
        boxes = self.text_boxes
        return [
            (a.text, b.text)
            for index, a in enumerate(boxes)
            for b in boxes[index + 1 :]
            if a.overlaps(b)
        ]


@dataclass(frozen=True)
class Session:
    """One browser session over a study: each step, and every error the page logged."""

    steps: dict[str, StepSeen]
    page_errors: list[str]
    console_errors: list[str]
    notifications: list[tuple[str, str]]
    failure: str | None

    def warnings(self) -> list[str]:
        """Warning and error notifications OHIF showed the reader, as ``type: text``."""
        return [f"{kind}: {text}" for kind, text in self.notifications if kind in _ALARMING]


def open_study(site: str, study_instance_uid: str, steps: list[Step], screenshots: Path) -> Session:
    """Open ``/viewer?StudyInstanceUIDs=...`` on ``site`` and run ``steps`` in order.

    Raises
    ------
    RuntimeError
        When the driver script exits with an error or prints no report.
    subprocess.TimeoutExpired
        When the whole session outlasts its wall-clock limit.
    """
    plan = {
        "url": f"{site}/viewer?StudyInstanceUIDs={study_instance_uid}",
        "chromium": str(CHROMIUM),
        "screenshotDir": str(screenshots),
        "timeoutMs": int(ACTION_TIMEOUT_S * 1000),
        "steps": [step.__dict__ for step in steps],
    }
    screenshots.mkdir(parents=True, exist_ok=True)
    plan_path = screenshots / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    completed = subprocess.run(
        ["node", str(DRIVER), str(plan_path)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0 or not completed.stdout.strip():
        raise RuntimeError(
            f"{DRIVER.name} exited with {completed.returncode}: {completed.stderr[-4000:]}"
        )
    (screenshots / "report.json").write_text(completed.stdout)
    report: dict[str, Any] = json.loads(completed.stdout)
    return Session(
        steps={
            seen["name"]: StepSeen(
                name=seen["name"],
                found=seen["found"],
                missing=seen["missing"],
                text_boxes=[
                    TextBox(
                        item["text"],
                        item["box"]["left"],
                        item["box"]["top"],
                        item["box"]["right"],
                        item["box"]["bottom"],
                    )
                    for item in seen["textBoxes"]
                ],
                screenshot=Path(seen["screenshot"]),
                viewport_screenshot=Path(seen["viewportScreenshot"]),
            )
            for seen in report["steps"]
        },
        page_errors=report["pageErrors"],
        console_errors=report["consoleErrors"],
        notifications=[(toast["type"], toast["text"]) for toast in report["toasts"]],
        failure=report["failure"],
    )
