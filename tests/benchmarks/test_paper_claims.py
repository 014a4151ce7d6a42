"""The seed papers' claims are judged from the benchmark's rows: a top-1 difference with its 95% interval, a
verdict computed from it, and 'not measured' where a row is missing."""
from benchmarks.dynamic.paper_claims import Row, claims_markdown, difference, not_worse, within


def speed(backbone, real):
    return {b: {"backbone": backbone, "real": real, "oracle": real * 0.9, "spread": 0.01} for b in ("1", "256")}


def test_the_difference_of_two_top1_figures_has_the_interval_of_two_independent_proportions():
    d, low, high = difference(Row("a", 92.0, 10_000, 50.0), Row("b", 93.0, 10_000, 100.0))
    assert d == -1.0 and -1.75 < low < -1.70 and -0.30 < high < -0.25


def test_a_bounded_loss_is_read_off_the_measured_difference_and_equal_accuracy_off_its_interval():
    base = Row("b", 93.0, 10_000, 100.0)
    assert not_worse(Row("a", 92.7, 10_000, 40.0), base)          # 0.3 below, the interval reaches 0
    assert not not_worse(Row("a", 91.5, 10_000, 40.0), base)
    assert within(Row("a", 92.6, 10_000, 40.0), base, 0.5)        # 0.4 below: within half a point
    assert not within(Row("a", 92.2, 10_000, 40.0), base, 0.5)    # 0.8 below, though its interval reaches -0.5


def test_branchynet_holds_only_when_accuracy_is_kept_and_the_exits_are_faster():
    kept = {"backbone alone (resnet20_cifar)": Row("backbone alone (resnet20_cifar)", 93.1, 10_000, 100.0),
            "exits, entropy, drop=0.5": Row("exits, entropy, drop=0.5", 92.9, 10_000, 35.0, speed(2.0, 1.0))}
    text = claims_markdown(list(kept.values()), {})
    assert "exits keep accuracy and cut time | exits, entropy, drop=0.5: 92.90% at 35.0%" in text
    assert "2.00x at batch 1" in text and "Holds within 0.5 point." in text
    slow = dict(kept, **{"exits, entropy, drop=0.5": Row("exits, entropy, drop=0.5", 92.9, 10_000, 35.0,
                                                        speed(1.0, 1.2))})
    assert "Does not hold here within 0.5 point (not faster" in claims_markdown(list(slow.values()), {})


def test_a_claim_without_its_rows_is_said_to_be_unmeasured():
    text = claims_markdown([], {})
    assert text.count("not measured in this run") == 7


def test_distillation_holds_only_when_the_interval_of_the_gain_is_above_zero():
    alone = Row("backbone alone (lenet_mnist)", 91.0, 10_000, 100.0)
    clearly = Row("lenet_mnist taught by resnet20_cifar (KD)", 92.5, 10_000, 100.0)
    barely = Row("lenet_mnist taught by resnet20_cifar (KD)", 91.3, 10_000, 100.0)
    assert "Holds" in claims_markdown([alone, clearly], {})
    text = claims_markdown([alone, barely], {})
    assert "Does not hold here (no difference the test split can tell)" in text and "+0.30 points" in text


def test_msdnet_is_judged_at_every_resnet_exits_budget():
    res = {"anytime": [{"name": "exit1", "macs": 5e6, "top1": 85.0}, {"name": "final", "macs": 3e7, "top1": 93.0}]}
    better = {"anytime": [{"name": "classifier1", "macs": 4e6, "top1": 88.0}]}
    worse = {"anytime": [{"name": "classifier1", "macs": 4e6, "top1": 80.0}]}
    assert "Holds at every" in claims_markdown([], {"msdnet": better, "resnet20_exits": res})
    assert "Does not hold here at every" in claims_markdown([], {"msdnet": worse, "resnet20_exits": res})
