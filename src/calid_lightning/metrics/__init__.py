"""Pure metric functions (tensors in, numbers out): the bottom layer, importable by data, models and up."""
