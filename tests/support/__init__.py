"""Test support: data, model builders, process launchers and HTTP helpers shared by the suite."""
