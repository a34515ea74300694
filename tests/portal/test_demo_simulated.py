"""The demo's simulated fleet: devices registered so that bench/simulator.py can play them."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import pytest

from devices import services
from devices.models import Device
from portal.demo import demo_prepare, demo_simulated_fleet_prepare, simulated_device_id, simulated_device_token

pytestmark = pytest.mark.django_db

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_common():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_it_registers_devices_whose_tokens_the_simulator_derives(tmp_path):
    demo_prepare()
    secret = demo_simulated_fleet_prepare(data_dir=tmp_path, devices=5)
    assert Device.objects.filter(account__username="simulated-fleet").count() == 5
    common = _bench_common()
    for index in range(5):
        # The simulator's own derivation, so the two can never drift apart unnoticed.
        token = common.device_token(index, secret)
        assert token == simulated_device_token(secret, index)
        assert common.device_uid(index) == simulated_device_id(index)
        device = services.device_authenticate(token=token)
        assert device is not None and device.device_id == simulated_device_id(index)
    assert stat.S_IMODE((tmp_path / "demo-fleet" / "simulator-secret").stat().st_mode) == 0o600


def test_it_keeps_its_secret_and_adds_only_the_missing_devices(tmp_path):
    demo_prepare()
    secret = demo_simulated_fleet_prepare(data_dir=tmp_path, devices=3)
    again = demo_simulated_fleet_prepare(data_dir=tmp_path, devices=6)
    assert again == secret
    ids = sorted(Device.objects.filter(account__username="simulated-fleet").values_list("device_id", flat=True))
    assert ids == [simulated_device_id(index) for index in range(6)]
