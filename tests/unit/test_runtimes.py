"""The serving images' library versions, and a model's held against them."""

from __future__ import annotations

import pytest
import yaml

from promoter import runtimes
from promoter.spec import Implementation, Protocol

MLSERVER = "seldonio/mlserver:1.7.1-sklearn"


def mlmodel(sklearn: str | None = "1.9.1", python: str | None = "3.11.7") -> dict:
    flavors: dict = {"python_function": {"loader_module": "mlflow.sklearn"}, "sklearn": {"pickled_model": "model.pkl"}}
    if sklearn:
        flavors["sklearn"]["sklearn_version"] = sklearn
    if python:
        flavors["python_function"]["python_version"] = python
    return {"flavors": flavors}


def test_the_default_images_are_the_ones_the_end_to_end_install_uses() -> None:
    assert runtimes.image_for(Implementation.SKLEARN_SERVER, Protocol.V2, {}) == MLSERVER
    assert runtimes.versions_of(MLSERVER, {}) == {"python": "3.10", "scikit-learn": "1.5.2", "numpy": "1.26.4"}
    assert runtimes.image_for(Implementation.SKLEARN_SERVER, Protocol.SELDON, {}) == "seldonio/sklearnserver:1.18.2"
    assert runtimes.versions_of("seldonio/mlflowserver:1.18.2", {}) == {}  # builds the model's own env


def test_settings_choose_the_image_and_say_what_it_has() -> None:
    images = {"SKLEARN_SERVER/v2": "my/mlserver:2"}
    assert runtimes.image_for(Implementation.SKLEARN_SERVER, Protocol.V2, images) == "my/mlserver:2"
    assert runtimes.versions_of("my/mlserver:2", {"my/mlserver:2": {"python": "3.12"}}) == {"python": "3.12"}
    assert runtimes.versions_of(MLSERVER, {MLSERVER: {"python": "3.10"}}) == {"python": "3.10"}  # replaced whole


def test_the_model_folder_says_what_it_was_saved_with() -> None:
    env = yaml.safe_dump({"python": "3.11.9", "dependencies": ["-r requirements.txt"]}).encode()
    requirements = b"mlflow==3.17.2\ncloudpickle==3.1.1\nnumpy==2.4.6\nscikit-learn==1.9.1\n"
    assert runtimes.model_versions(mlmodel(), env, requirements) == {
        "scikit-learn": "1.9.1", "python": "3.11.9", "numpy": "2.4.6"}
    # no python_env.yaml: MLmodel's python_function flavor; nothing pinned: no numpy
    assert runtimes.model_versions(mlmodel(), None, b"numpy\n") == {"scikit-learn": "1.9.1", "python": "3.11.7"}
    assert runtimes.model_versions({}, b": not yaml [", None) == {}


@pytest.mark.parametrize(("model", "differ"), [
    ({"scikit-learn": "1.5.2", "python": "3.10.12", "numpy": "1.26.0"}, []),  # numpy: the major counts
    ({"scikit-learn": "1.9.1", "python": "3.10.4"}, ["scikit-learn"]),
    ({"scikit-learn": "1.5.1"}, ["scikit-learn"]),  # any other scikit-learn warns when unpickled
    ({"scikit-learn": "1.5.2", "python": "3.11.2"}, ["python"]),
    ({"numpy": "2.4.6"}, ["numpy"]),
    ({}, []),
])
def test_versions_are_compared_as_far_as_each_library_needs(model: dict, differ: list[str]) -> None:
    skew = runtimes.compare(model, MLSERVER, runtimes.versions_of(MLSERVER, {}))
    assert list(skew.differ) == differ and bool(skew) is bool(differ)


def test_a_skew_names_both_versions_and_the_fix() -> None:
    skew = runtimes.compare({"scikit-learn": "1.9.1", "python": "3.11.7", "numpy": "2.4.6"}, MLSERVER,
                            runtimes.versions_of(MLSERVER, {}))
    assert skew.detail(Implementation.SKLEARN_SERVER, Protocol.V2) == (
        "the model was saved with scikit-learn 1.9.1, Python 3.11.7 and numpy 2.4.6; "
        "seldonio/mlserver:1.7.1-sklearn (SKLEARN_SERVER, protocol v2) has scikit-learn 1.5.2, Python 3.10 "
        "and numpy 1.26.4")
    assert skew.fix().startswith("log the model with scikit-learn 1.5.2, Python 3.10 and numpy 1.26.4, or serve it")


def test_what_is_not_a_version_number_is_not_read() -> None:
    # the folder is the user's: what it says reaches status only as a version number
    assert runtimes.model_versions(mlmodel(sklearn="1.9.1; rm -rf /", python="3" * 200), None, None) == {}
