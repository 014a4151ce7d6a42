"""InputSpec: one sample's shape, dtype and value range, from the user's example tensor or given, and the
dummy batches made of it (float ones follow the model's dtype; integer ones stay in their range)."""
import pytest
import torch
from torch import nn

from distill_ee.arguments import ArgumentError, check_value
from distill_ee.early_exit.exit_set import ExitsStepFields
from distill_ee.inputs import InputSpec, InputSpecError, input_spec, spec_from_record
from distill_ee.modules import example_input


def test_an_integer_example_keeps_its_dtype_and_the_range_of_its_values():
    spec = InputSpec.of(torch.tensor([[3, 7, 5], [4, 4, 9]]))
    assert spec == InputSpec((3,), "int64", 3, 10)  # [min, max + 1): high excluded, as for torch.randint
    assert InputSpec.of(torch.zeros(2, 3, dtype=torch.int32), value_range=(0, 100)) == InputSpec((3,), "int32", 0, 100)


def test_a_float_example_is_a_float_input_like_a_plain_shape():
    float64 = InputSpec.of(torch.zeros(2, 1, 28, 28, dtype=torch.float64))
    assert float64 == input_spec([1, 28, 28]) == InputSpec((1, 28, 28))


def test_integer_dummy_batches_are_that_dtype_within_the_range_and_fixed():
    spec = InputSpec((1000,), "long", 5, 8)
    x = spec.make(4)
    assert x.dtype == torch.int64 and x.shape == (4, 1000) and int(x.min()) == 5 and int(x.max()) == 7
    assert torch.equal(x, spec.make(4))


def test_a_float_dummy_batch_takes_the_models_floating_dtype():
    model = nn.Linear(3, 2).double()
    assert example_input(model, (3,), batch=5).dtype == torch.float64
    assert example_input(model, InputSpec((3,), "int16", 0, 4)).dtype == torch.int16


@pytest.mark.parametrize("make, message", [
    (lambda: InputSpec((3,), "complex7", 0, 4), "unknown input dtype 'complex7'"),
    (lambda: InputSpec((3,), "int64"), "needs a value range low,high"),
    (lambda: InputSpec((3,), "int64", 4, 4), "with low < high"),
    (lambda: InputSpec((3,), None, 0, 4), "a value range is for integer inputs only"),
])
def test_an_input_that_cannot_be_made_is_one_line(make, message):
    with pytest.raises(InputSpecError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_record_holds_dtype_and_range_for_integer_inputs_only():
    assert InputSpec((3, 4)).record() == {"input_shape": [3, 4]}
    ids = InputSpec((6,), "int64", 0, 50)
    assert ids.record() == {"input_shape": [6], "input_dtype": "int64", "input_range": [0, 50]}
    assert spec_from_record(ids.record()) == ids


def test_an_old_record_without_dtype_is_a_float_input():
    assert spec_from_record({"input_shape": [1, 28, 28], "num_classes": 10}) == InputSpec((1, 28, 28))


def test_an_exits_step_checks_the_dtype_it_records():
    fields = {"config": {}, "num_classes": 3, "input_shape": [6]}
    assert check_value(ExitsStepFields, fields).input_dtype is None
    assert check_value(ExitsStepFields, {**fields, "input_dtype": "int64", "input_range": [0, 5]}).input_range == [0, 5]
    with pytest.raises(ArgumentError, match="unknown input dtype 'complex7'"):
        check_value(ExitsStepFields, {**fields, "input_dtype": "complex7", "input_range": [0, 5]})
