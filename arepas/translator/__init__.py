"""Edge-to-image translator: pix2pixHD-style generator, conditional PatchGAN, training, inference.

The defaults reproduce the reference implementation, the authors' code (Mitic & Langs, MLMI
2025, arXiv 2509.12905; github.com/cirmuw/arepas): a global
generator with 64 base channels, 2 downsamplings, 9 residual blocks with dropout 0.5 and affine
instance norms; a spectral-norm PatchGAN 64-128-256-512-1 on (edges, image); PyTorch's default
weight initialisation; Adam 2e-4, betas (0.5, 0.999), batch 8. Each step updates the generator
first (G loss = BCE adversarial + 100 x L1), then the discriminator on a fresh fake generated
without gradients (D loss = BCE with real label 0.9 + BCE with fake label 0, summed, + 1 x gradient
penalty on real/fake interpolates). Training pairs are 3 blob-swap augmented OpenCV Canny edge maps
per slice, no unaugmented copy. The reference also computes a VGG19 relu3_3 L2 term, but entirely
without gradients, so it does not change the generator's update; "none" reproduces that.

Options that are ours, not the reference's (each a TranslatorSettings field):
- gan_step="discriminator_first": discriminator step first (BCE terms halved), then the generator
  against the updated discriminator on the same fake, as in pix2pix / pix2pixHD.
- init="normal_0.02": pix2pix's N(0, 0.02) conv weights with zero bias.
- affine_norm=False: instance norms without learnable scale and shift.
- perceptual="vgg19" (a VGG19 relu3_3 L2 term that does give a gradient; weights from a local
  file, nothing is downloaded) or "feature_matching" (pix2pixHD's discriminator feature L1).
- edge_detector="skimage", augment_keep_unaugmented=True, swap_style="clean_source": the edge
  maps and augmentation this project used before matching the reference (see arepas.edges).
- gp_every=k > 1: the gradient penalty on every k-th step only, weighted k x lambda_gp, so its
  average pull stays the same ("lazy regularisation", Karras et al., CVPR 2020, StyleGAN2, who
  apply their R1 penalty every 16 minibatches). The penalty's double backward is about 40 % of
  a CPU demo step.
- lr_decay_epochs=k: the learning rate of both networks falls linearly over the last k epochs,
  as pix2pixHD trains (Wang et al., CVPR 2018: constant, then linear decay to zero); epoch e of
  E uses lr x min(1, (E - e + 1) / (k + 1)).
- augment_mirror=True: each augmented copy (never the unaugmented edge map) is mirrored across the
  slice's first axis with probability 1/2, edges and target alike; in the workflow's axial and
  coronal slices (RAS order) that axis is left-right, so on scans registered to a template a
  mirrored healthy slice is still a plausible healthy slice (the workflow refuses it for
  sagittal slices). Mirroring is a standard augmentation of brain MRI networks (e.g. nnU-Net,
  Isensee et al., Nature Methods 2021); the reference mirrors nothing.
- crop_size: train on a random crop_size x crop_size window of each pair (a new position every
  epoch) instead of the whole slice, for speed on large slices; inference uses whole slices.
- max_steps: a budget of generator steps (planned_steps), so that one setting suits cohorts of
  any size; training stops when it is spent, mid-epoch if need be.
Model files written before these options existed load with the values they were trained with.

Modules, by job: settings (TranslatorSettings), network (generator, discriminator, VGG19
features), pairs (edge maps and augmented training pairs), training (train_translator),
inference (translate: reconstruction) and files (save_translator, load_translator). Their
names are importable from this package.
"""

from arepas.translator.files import load_translator, save_translator
from arepas.translator.inference import translate
from arepas.translator.network import (
    EdgeToImageGenerator,
    PatchDiscriminator,
    ResidualBlock,
    VGG19Relu33,
    build_discriminator,
    build_generator,
    build_vgg19_features,
)
from arepas.translator.pairs import (
    crop_corners,
    crop_pairs,
    edges_for,
    loader_workers,
    mirrored_pairs,
    pairs_per_slice,
    training_pair_batch,
    training_pairs,
)
from arepas.translator.settings import (
    GAN_STEP_CHOICES,
    INIT_CHOICES,
    PERCEPTUAL_CHOICES,
    V0_SETTINGS,
    TranslatorSettings,
    discriminator_grid,
)
from arepas.translator.training import (
    _CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    _check_resumable,
    _torch_runtime,
    _train_step,
    epoch_learning_rate,
    feature_matching_loss,
    gradient_penalty,
    last_epoch,
    planned_steps,
    steps_per_epoch,
    train_translator,
)

__all__ = [
    "CHECKPOINT_NAME",
    "GAN_STEP_CHOICES",
    "HISTORY_COLUMNS",
    "INIT_CHOICES",
    "V0_SETTINGS",
    "PERCEPTUAL_CHOICES",
    "_CHECKPOINT_FORMAT",
    "EdgeToImageGenerator",
    "PatchDiscriminator",
    "ResidualBlock",
    "TranslatorSettings",
    "VGG19Relu33",
    "_check_resumable",
    "_torch_runtime",
    "_train_step",
    "build_discriminator",
    "build_generator",
    "build_vgg19_features",
    "crop_corners",
    "crop_pairs",
    "discriminator_grid",
    "edges_for",
    "epoch_learning_rate",
    "feature_matching_loss",
    "gradient_penalty",
    "last_epoch",
    "load_translator",
    "loader_workers",
    "mirrored_pairs",
    "pairs_per_slice",
    "planned_steps",
    "save_translator",
    "steps_per_epoch",
    "train_translator",
    "training_pair_batch",
    "training_pairs",
    "translate",
]
