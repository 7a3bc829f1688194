"""The caption targets of #20 (`evaluators/caption_metrics.py`): values in their own key's vocabulary, caption
colour vs the image's oracle colour and vs the user's favourite colour (lift over the prior's chance)."""
import json

import numpy as np
import pytest

from dualfashion_jax.data.synthetic.truth import Truth
from dualfashion_jax.evaluators import caption_metrics as cm


def _cap(color, material="cotton", feature="plain", style="casual"):
    return json.dumps({"Color": color, "Material": material, "Design features": feature,
                       "Clothing Fashion Style": style})


def test_value_in_vocabulary_counts_misplaced_and_missing_values():
    caps = [_cap("red"), _cap("a", "blue casual"), _cap("navy", "washed denim", "buttoned", "boho"), None,
            '{"Color": "black"}']
    out = cm.value_in_vocabulary(caps)
    # slots in vocabulary: 4, 2 ("a" and "blue casual" are not), 4 (synonyms), 0, 1 -> 11 of 20
    assert out["caption_value_in_vocab"] == pytest.approx(11 / 20)
    assert out["caption_in_vocab_color"] == pytest.approx(3 / 5)
    assert out["caption_in_vocab_material"] == pytest.approx(2 / 5)


def test_caption_colour_scores_against_image_and_preference():
    n_cat, k = 2, 8
    prior = np.full((n_cat, k), 1.0 / k)
    truth = Truth(item={}, uids=np.array([10, 11]), fav_colour=np.array([[0, 1], [7, 7]]),
                  fav_material=np.zeros((2, n_cat), np.int64), colour_pref=np.zeros((2, n_cat, k)),
                  colour_prior=prior, material_prior=np.full((n_cat, 5), 0.2))
    caps = [_cap("red"), _cap("orange"), _cap("black"), _cap("a"), None]
    image = np.array([0, 0, 7, 3, 7])
    out = cm.caption_colour_scores(caps, image, np.array([10, 10, 11, 11, 11]), np.array([0, 1, 0, 1, 1]), truth)
    assert out["caption_colour_image"] == pytest.approx(2 / 5)  # red = red, black = black
    # random pairing: P_cap(red) P_img(red) + P_cap(black) P_img(black) = 1/5 * 2/5 + 1/5 * 2/5
    assert out["caption_colour_image_chance"] == pytest.approx(4 / 25)
    assert out["caption_colour_image_lift"] == pytest.approx(0.4 / 0.16)
    const = cm.caption_colour_scores([_cap("black")] * 5, image, np.array([10] * 5), np.zeros(5, np.int64), truth)
    assert const["caption_colour_image"] == pytest.approx(2 / 5) and const["caption_colour_image_lift"] == 1.0
    assert out["caption_pref_colour_match"] == pytest.approx(3 / 5)  # red (fav 0), orange (fav 1), black (fav 7)
    assert out["caption_pref_colour_chance"] == pytest.approx(1 / 8)
    assert out["caption_pref_colour_lift"] == pytest.approx(0.6 * 8)
    with pytest.raises(ValueError, match="captions for"):
        cm.caption_colour_scores(caps, image[:3], np.array([10] * 5), np.zeros(5, np.int64), truth)
