"""The GPU check's report: each check as it finishes gets a progress line
and the report is written again (gpu_check.json, gpu_check.md), so a run
killed part-way still leaves what it had.

A check is passed (ok true), failed (false) or not run (null, the note says
why); a part that could not run at all is listed as skipped, loudly, and is
not a failure.
"""
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class Result:
    """What a check function returns: ok (None = not run), a headline
    value, further figures, a note."""
    ok: Optional[bool]
    value: Any = None
    figures: dict = field(default_factory=dict)
    note: str = ''


def not_run(reason):
    return Result(None, note=reason)


@dataclass
class Check(Result):
    part: str = ''
    name: str = ''
    seconds: float = 0.0


class Report:
    """Checks of one run of the GPU check, written to `out` after each."""

    def __init__(self, out, header):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.header = dict(header)
        self.checks = []
        self.skipped_parts = {}
        self.start = time.perf_counter()

    def progress(self, text):
        print(f"[gpu_check {time.perf_counter() - self.start:6.1f} s] {text}",
              flush=True)

    def run(self, part, name, function, *args, **kwargs):
        """Run one check; an exception is a failed check naming it."""
        self.progress(f"{part}: {name} ...")
        start = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001  (reported, not hidden)
            where = traceback.extract_tb(error.__traceback__)[-1]
            result = Result(False, note=(
                f"{type(error).__name__}: {str(error)[:600]} (at "
                f"{Path(where.filename).name}:{where.lineno})"))
        check = Check(**asdict(result), part=part, name=name,
                      seconds=round(time.perf_counter() - start, 2))
        self.checks.append(check)
        status = {True: 'ok', False: 'FAILED', None: 'not run'}[check.ok]
        value = '' if check.value is None else f" {format_value(check.value)}"
        note = f" ({check.note})" if check.note else ''
        self.progress(f"{part}: {name}: {status}{value}{note}")
        self.write()
        return check

    def skip_part(self, part, reason):
        self.skipped_parts[part] = reason
        self.progress(f"{part}: SKIPPED: {reason}")
        self.write()

    def failed(self):
        return [f"{c.part}: {c.name}" for c in self.checks if c.ok is False]

    def to_dict(self):
        return {**self.header,
                'seconds': round(time.perf_counter() - self.start, 1),
                'skipped_parts': dict(self.skipped_parts),
                'checks': [{'part': c.part, 'name': c.name, 'ok': c.ok,
                            'value': c.value, 'figures': c.figures,
                            'note': c.note, 'seconds': c.seconds}
                           for c in self.checks],
                'failed': self.failed()}

    def write(self):
        data = self.to_dict()
        (self.out / 'gpu_check.json').write_text(
            json.dumps(data, indent=1, default=str) + '\n')
        (self.out / 'gpu_check.md').write_text(markdown(data))


def format_value(value):
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ', '.join(f"{k} {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(format_value(v) for v in value) + ']'
    return str(value)


def cell(text):
    return str(text).replace('|', '\\|').replace('\n', ' ')


def markdown(data):
    """The report as a page: the set-up, skipped parts, one table a part."""
    checks = data['checks']
    counts = {label: sum(c['ok'] is state for c in checks)
              for label, state in (('passed', True), ('failed', False),
                                   ('not run', None))}
    lines = [f"# GPU check: part {data['part']}, device {data['device']}"
             f"{' (tiny mode)' if data.get('tiny') else ''}", '']
    for key in ('torch', 'cuda', 'gpu', 'open3d', 'python', 'started'):
        lines.append(f"- {key}: {data.get(key)}")
    lines.append(f"- took {data['seconds']} s")
    lines.append('')
    for part, reason in data['skipped_parts'].items():
        lines += [f"> **PART `{part}` SKIPPED: {reason}.** Nothing of it was "
                  f"checked; this is not counted as a failure.", '']
    verdict = 'FAILED' if data['failed'] else 'passed'
    lines += [f"**{verdict}**: {counts['passed']} passed, {counts['failed']} "
              f"failed, {counts['not run']} not run.", '']
    for name in data['failed']:
        lines.append(f"- failed: {name}")
    for part in dict.fromkeys(c['part'] for c in checks):
        lines += ['', f"## {part}", '',
                  '| check | result | value | figures | note | s |',
                  '| --- | --- | --- | --- | --- | --- |']
        for c in (c for c in checks if c['part'] == part):
            result = {True: 'ok', False: '**FAILED**',
                      None: 'not run'}[c['ok']]
            value = '' if c['value'] is None else format_value(c['value'])
            lines.append(f"| {cell(c['name'])} | {result} | {cell(value)} | "
                         f"{cell(format_value(c['figures']))} | "
                         f"{cell(c['note'])} | {c['seconds']:.1f} |")
    return '\n'.join(lines) + '\n'
