"""Atari game names: resolve what users type to one canonical game, and read its action names."""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from gpurender.errors import GpurenderError


@dataclass(frozen=True)
class Game:
    """One Atari game under the names each library knows it by."""

    rom: str
    """ale-py's ROM id, e.g. ``ms_pacman``."""
    name: str
    """CamelCase name, e.g. ``MsPacman``."""

    @property
    def envpool_id(self) -> str:
        return f"{self.name}-v5"

    @property
    def gym_id(self) -> str:
        """The id SB3's ``make_atari_env`` is used with (raw frames, no sticky actions)."""
        return f"{self.name}NoFrameskip-v4"

    @property
    def title(self) -> str:
        return self.name.upper()


def _camel(rom: str) -> str:
    return "".join(part.capitalize() for part in rom.split("_"))


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@functools.cache
def _roms() -> dict[str, str]:
    """Map of normalised key -> ROM id for every game ale-py ships."""
    from ale_py.roms import get_all_rom_ids

    return {_key(rom): rom for rom in get_all_rom_ids()}


def resolve_game(text: str) -> Game:
    """Accept ``Breakout``, ``breakout``, ``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5``..."""
    stem = text.strip().split("/")[-1]
    stem = re.sub(r"-v\d+$", "", stem)
    stem = re.sub(r"(NoFrameskip|Deterministic)$", "", stem)
    roms = _roms()
    key = _key(stem)
    if key in roms:
        return Game(rom=roms[key], name=_camel(roms[key]))
    near = difflib.get_close_matches(key, roms, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(_camel(roms[k]) for k in near)}?" if near else ""
    raise GpurenderError(f"unknown Atari game {text!r}{hint}")


@functools.cache
def action_meanings(game: Game) -> tuple[str, ...]:
    """The game's minimal action set, named as ale-py names it (NOOP, FIRE, RIGHT, ...)."""
    import ale_py

    quiet_ale()
    ale = ale_py.ALEInterface()
    ale.loadROM(ale_py.roms.get_rom_path(game.rom))
    return tuple(a.name for a in ale.getMinimalActionSet())


def quiet_ale() -> None:
    """Keep ale-py to errors in this process. Its log level is process-wide (a static method) and
    the "A.L.E: Arcade Learning Environment" banner is printed by ``ALEInterface()`` itself, so it
    is set before the first interface is made: setting it on an instance, as gymnasium's
    ``AtariEnv`` does, comes one banner too late."""
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
