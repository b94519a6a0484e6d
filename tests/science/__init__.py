"""Tests of forecache.science."""
