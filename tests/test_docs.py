"""Every command the README and the guides show still works as written: its
script exists, answers --help, and takes every option the docs give it."""
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / 'README.md', REPO / 'CONTRIBUTING.md',
               *(REPO / 'docs').glob('*.md')])
SCRIPTS = sorted((REPO / 'scripts').glob('*.py'))
OVERRIDE = re.compile(r'--(dataset|model|pipeline)\.[\w.]+')


def documented_commands(path):
    """Shell commands of a Markdown file's code blocks (indented or fenced),
    continuation lines joined, that run one of our scripts or commands."""
    commands, lines = [], path.read_text().splitlines()
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith('```'):
            fenced = not fenced
            i += 1
            continue
        if fenced or line.startswith('    '):
            command = line.strip()
            while command.endswith('\\') and i + 1 < len(lines):
                i += 1
                command = command[:-1] + ' ' + lines[i].strip()
            if 'scripts/' in command and '.py' in command or \
                    command.startswith('ncm-'):
                commands.append(command)
        i += 1
    return commands


def script_and_arguments(command):
    """(script path, arguments) of a documented command."""
    words = shlex.split(command.split(' # ')[0].split(' > ')[0].split(' | ')[0])
    for index, word in enumerate(words):
        if word.startswith('scripts/') and word.endswith('.py'):
            return REPO / word, words[index + 1:]
        if word.startswith('ncm-'):
            return command_script(word), words[index + 1:]
    raise ValueError(f"no script in {command!r}")


def command_script(name):
    """The wrapper in scripts/ of a console command (ncm-X, setup.cfg)."""
    text = (REPO / 'setup.cfg').read_text()
    module = re.search(rf'^\s*{re.escape(name)} = ([\w.]+):main', text, re.M)
    assert module, f"{name} is not a console script in setup.cfg"
    for script in SCRIPTS:
        if f'from {module.group(1)} import main' in script.read_text():
            return script
    raise AssertionError(f"no wrapper in scripts/ runs {module.group(1)}")


@functools.lru_cache(maxsize=None)
def help_text(script):
    done = subprocess.run([sys.executable, str(script), *(
        ['torch', '-c', 'ncm_kpconv_demo.yml'] if script.stem == 'run_pipeline'
        else []), '--help'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help(script):
    assert help_text(script).startswith('usage:')


def all_documented():
    return [(doc, command) for doc in DOCS for command in documented_commands(doc)]


def test_the_docs_show_commands():
    """The parser itself: the README's demo command is found."""
    readme = documented_commands(REPO / 'README.md')
    assert any('scripts/run_pipeline.py torch -c ncm_kpconv_demo.yml' in c
               for c in readme)


@pytest.mark.parametrize('doc,command', all_documented(),
                         ids=lambda v: v.name if isinstance(v, Path) else '')
def test_every_documented_command_takes_its_options(doc, command):
    script, arguments = script_and_arguments(command)
    assert script.is_file(), f"{doc.name}: {command}: no {script}"
    usage = help_text(script)
    for word in arguments:
        option = word.split('=')[0]
        if not option.startswith('--') or OVERRIDE.fullmatch(option):
            continue
        assert re.search(rf'(^|[\s,\[]){re.escape(option)}([\s,=\]]|$)', usage), \
            f"{doc.name}: {command}: {script.name} has no option {option}"
