"""Small custom widgets: the program's waveform overview and an input level meter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from rig_app.jobs import Overview

__all__ = ["LevelMeter", "WaveformOverview"]

_BAND_COLOURS = (QColor(222, 235, 247), QColor(239, 243, 255))
_MUSIC = QColor(33, 102, 172)
_NOISE = QColor(130, 130, 130)
_MARKER = QColor(214, 39, 40)
_AXIS_H = 16
_TITLE_H = 16


def _per_pixel(lo: np.ndarray, hi: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce per-column extremes to ``width`` pixels (min of minima, max of maxima)."""
    width = max(1, min(width, len(lo)))
    edges = np.linspace(0, len(lo), width + 1).astype(np.int64)[:-1]
    return np.minimum.reduceat(lo, edges), np.maximum.reduceat(hi, edges)


def _tick_step(duration_s: float, width: int) -> float:
    """A round time step giving ticks at least ~70 px apart."""
    wanted = duration_s * 70.0 / max(width, 1)
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if step >= wanted:
            return float(step)
    return 3600.0 * math.ceil(wanted / 3600.0)


def _tick_label(seconds: float, duration_s: float) -> str:
    if duration_s >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}:{rest:02d}"
    return f"{seconds:g} s"


class WaveformOverview(QWidget):
    """The music (and noise) program at a glance: songs as bands, markers as red lines."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._overview: Overview | None = None
        self._songs: list[tuple[str, float, float]] = []
        self._markers: list[float] = []
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(700, 180)

    def set_program(
        self,
        overview: Overview | None,
        songs: Sequence[tuple[str, float, float]] = (),
        markers: Sequence[float] = (),
    ) -> None:
        """Show ``overview`` with (title, start_s, end_s) song bands and marker times."""
        self._overview = overview
        self._songs = list(songs)
        self._markers = list(markers)
        self.update()

    @property
    def has_data(self) -> bool:
        return self._overview is not None

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        overview = self._overview
        if overview is None or overview.duration_s <= 0:
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "no program yet")
            painter.end()
            return
        width = self.width()
        plot = QRectF(0, _TITLE_H, width, self.height() - _TITLE_H - _AXIS_H)

        def x_of(seconds: float) -> float:
            return width * seconds / overview.duration_s

        metrics = QFontMetrics(self.font())
        for index, (title, start, end) in enumerate(self._songs):
            band = QRectF(x_of(start), 0, max(1.0, x_of(end) - x_of(start)), plot.bottom())
            painter.fillRect(band, _BAND_COLOURS[index % 2])
            text = metrics.elidedText(
                f"{index + 1} {title}", Qt.TextElideMode.ElideRight, int(band.width()) - 4
            )
            painter.setPen(self.palette().text().color())
            painter.drawText(
                QRectF(band.left() + 2, 0, band.width() - 4, _TITLE_H),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                text,
            )

        noise_min, noise_max = overview.noise_min, overview.noise_max
        has_noise = noise_min is not None and noise_max is not None
        music_h = plot.height() * (0.62 if has_noise else 1.0)
        self._draw_lane(
            painter, overview.music_min, overview.music_max, plot.top(), music_h, _MUSIC
        )
        if noise_min is not None and noise_max is not None:
            self._draw_lane(
                painter,
                noise_min,
                noise_max,
                plot.top() + music_h,
                plot.height() - music_h,
                _NOISE,
            )

        pen = QPen(_MARKER)
        pen.setWidthF(1.5)
        painter.setPen(pen)
        for seconds in self._markers:
            x = x_of(seconds)
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))

        if has_noise:  # over the lanes and the first marker, on its own background
            width_px = metrics.horizontalAdvance("noise") + 6
            noise_box = QRectF(2, plot.top() + music_h + 1, width_px, 15)
            painter.fillRect(noise_box, self.palette().base())
            painter.setPen(self.palette().text().color())
            painter.drawText(noise_box, Qt.AlignmentFlag.AlignCenter, "noise")

        painter.setPen(self.palette().text().color())
        step = _tick_step(overview.duration_s, width)
        tick = 0.0
        while tick <= overview.duration_s + 1e-9:
            x = x_of(tick)
            painter.drawLine(QPointF(x, plot.bottom()), QPointF(x, plot.bottom() + 4))
            label = _tick_label(tick, overview.duration_s)
            left = min(max(0.0, x - metrics.horizontalAdvance(label) / 2), width - 40.0)
            painter.drawText(QPointF(left, self.height() - 3), label)
            tick += step
        painter.end()

    def _draw_lane(
        self,
        painter: QPainter,
        lo: np.ndarray,
        hi: np.ndarray,
        top: float,
        height: float,
        colour: QColor,
    ) -> None:
        pixel_lo, pixel_hi = _per_pixel(lo, hi, self.width())
        scale = max(float(np.max(np.abs(pixel_lo))), float(np.max(np.abs(pixel_hi))), 1e-6)
        middle = top + height / 2
        half = 0.45 * height / scale
        step = self.width() / len(pixel_lo)
        painter.setPen(QPen(colour))
        for index, (low, high) in enumerate(zip(pixel_lo, pixel_hi, strict=True)):
            x = (index + 0.5) * step
            painter.drawLine(
                QPointF(x, middle - float(high) * half), QPointF(x, middle - float(low) * half)
            )


class LevelMeter(QWidget):
    """A horizontal dBFS bar (-60 to 0) with the value written on it."""

    FLOOR_DB = -60.0

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._level_db = -math.inf
        self.setMinimumSize(200, 22)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(300, 22)

    @property
    def level_db(self) -> float:
        return self._level_db

    def set_level(self, level_db: float) -> None:
        self._level_db = float(level_db)
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        rect = self.rect().adjusted(0, 0, -1, -1)
        painter.fillRect(rect, self.palette().base())
        level = self._level_db
        if math.isfinite(level) and level > self.FLOOR_DB:
            fraction = min(1.0, (level - self.FLOOR_DB) / -self.FLOOR_DB)
            colour = (
                QColor(214, 39, 40)
                if level > -3
                else QColor(240, 180, 40)
                if level > -12
                else QColor(60, 170, 80)
            )
            painter.fillRect(QRectF(0, 0, rect.width() * fraction, rect.height() + 1), colour)
        painter.setPen(self.palette().mid().color())
        painter.drawRect(rect)
        text = f"{level:.1f} dBFS" if math.isfinite(level) and level > -120 else "— dBFS"
        painter.setPen(self.palette().text().color())
        painter.drawText(rect.adjusted(6, 0, -6, 0), Qt.AlignmentFlag.AlignVCenter, text)
        painter.end()
