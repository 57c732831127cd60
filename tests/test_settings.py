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
