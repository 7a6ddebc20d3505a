from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def flow_dir(data_root) -> Path:
    return data_root / "flow"


@pytest.fixture(scope="session")
def fortessa(flow_dir) -> Path:
    return flow_dir / "formats" / "Fortessa" / "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"


@pytest.fixture(scope="session")
def diva(flow_dir) -> Path:
    return flow_dir / "formats" / "FACS_Diva" / "facs_diva_test.fcs"
