"""The model architectures by name, torch-free (configs are validated without torch); their
builders are ``jobs.models.MODELS``, which has exactly these names."""

#: name -> what it is
MODEL_NAMES: dict[str, str] = {
    "mnist_cnn": "Madry et al.'s MNIST CNN (3.27M parameters)",
    "mnist_cnn_small": "the MNIST CNN at 1/4 width, for CPUs",
    "wrn": "Madry et al.'s CIFAR10 WRN-32-10",
    "wrn_small": "a WRN-8-1, for CPUs",
    "linear": "a linear classifier (toy)",
    "mlp": "a small MLP (toy)",
}

#: The architectures affine in their input: the only ones the exact attack (``type: exact``) takes.
AFFINE_MODEL_NAMES: tuple[str, ...] = ("linear",)
