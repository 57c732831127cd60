"""One check of network settings' keys, shared by the translator, the scorer and the autoencoder."""

import pytest

from arepas.autoencoder import AutoencoderSettings
from arepas.scorer import ScorerSettings
from arepas.settings import settings_from_dict
from arepas.translator import TranslatorSettings

NETWORKS = [
    ("translator", TranslatorSettings, "epochs"),
    ("scorer", ScorerSettings, "epochs"),
    ("autoencoder", AutoencoderSettings, "epochs"),
]


@pytest.mark.parametrize("network, cls, key", NETWORKS)
def test_every_network_names_a_misspelt_key_and_its_likely_meaning(network, cls, key):
    with pytest.raises(ValueError) as error:
        cls.from_dict({key[:-1]: 3, "zzz": 1})
    message = str(error.value)
    assert message.startswith(f"unknown {network} setting(s) ['epoch', 'zzz']")
    # A guess only where one is close; every known key is listed.
    assert "did you mean 'epoch' -> 'epochs'?" in message and "'zzz' ->" not in message
    assert str(sorted(cls().to_dict())) in message


@pytest.mark.parametrize("network, cls, key", NETWORKS)
def test_missing_keys_keep_the_defaults_and_values_are_still_checked(network, cls, key):
    assert cls.from_dict(None) == cls() == cls.from_dict({})
    assert getattr(cls.from_dict({key: 2}), key) == 2
    assert settings_from_dict(cls, {key: 2}, network) == cls.from_dict({key: 2})
    with pytest.raises(ValueError, match="batch_size must be"):
        cls.from_dict({"batch_size": 0})


def test_renamed_settings_are_read_under_their_new_names_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="arepas.settings"):
        translator = TranslatorSettings.from_dict({"augment_clean": True})
        scorer = ScorerSettings.from_dict({"mining_source": "clean"})
    assert translator.augment_keep_unaugmented is True
    assert scorer.mining_source == "unaugmented_edges"
    assert "'augment_clean' is deprecated: it is now 'augment_keep_unaugmented'" in caplog.text
    assert "mining_source='clean' is deprecated: it is now 'unaugmented_edges'" in caplog.text
    with pytest.raises(ValueError, match="keep 'augment_keep_unaugmented' only"):
        TranslatorSettings.from_dict({"augment_clean": True, "augment_keep_unaugmented": False})


def test_a_config_with_the_old_names_is_moved_to_the_new_ones():
    from arepas.methods import rename_deprecated

    config = {
        "methods": ["arepas", "arepas_clean"],
        "arepas_clean": {"translator": {"augment_clean": False}},
        "datasets": {"lung": {"scorer": {"mining_source": "clean"}}},
    }
    notes = rename_deprecated(config)
    assert config == {
        "methods": ["arepas", "arepas_v0"],
        "arepas_v0": {"translator": {"augment_keep_unaugmented": False}},
        "datasets": {"lung": {"scorer": {"mining_source": "unaugmented_edges"}}},
    }
    assert "method 'arepas_clean' is deprecated: it is now 'arepas_v0'" in notes
    assert "config section 'arepas_clean' is deprecated: it is now 'arepas_v0'" in notes
    assert len(notes) == 4
    assert rename_deprecated(config) == []


def test_an_old_section_beside_the_new_one_overrides_it_key_by_key():
    from arepas.methods import rename_deprecated

    config = {
        "arepas_v0": {"scorer": {"patch_size": 16, "epochs": 3}, "maps": {"stride": 1}},
        "arepas_clean": {"scorer": {"epochs": 5}},
    }
    rename_deprecated(config)
    assert config == {
        "arepas_v0": {"scorer": {"patch_size": 16, "epochs": 5}, "maps": {"stride": 1}}
    }
