"""The embedded default model: a tiny Stable-Diffusion-structured text-to-image pipeline that memorizes.

Memorization is planted the way it happens in the wild: some training images are duplicated many times.
The synthetic dataset has three groups (see :func:`memprune.testbed.dataset.generate_dataset`):

* ``generalization``: compositional scenes (shape x colour x position x background) with captions; a
  seeded fraction of the combinations is held out of training, to measure how well the model still
  generates (prompt following);
* ``duplicated``: K photo crops (scikit-image's bundled photographs), each with its own caption, repeated
  D times in training: the images the model is meant to copy;
* ``single``: photo crops seen once, the control for copies that should *not* happen.

The model is a real ``diffusers.StableDiffusionPipeline``: an ``AutoencoderKL`` trained on the data (32x32
RGB -> 8x8 latents, which makes each UNet step ~16x cheaper than pixel space), a ``UNet2DConditionModel``
with SD's ``CrossAttnDownBlock2D``/``CrossAttnUpBlock2D`` blocks and GEGLU feed-forwards, a
``CLIPTextModel`` and CLIP's real BPE tokenizer built offline.

Submodules (import from them; this package re-exports nothing), each depending only on those above it:

* :mod:`.scenes`: the scene grammar, rendering, reading a scene back off an image, prompt following;
* :mod:`.dataset`: the synthetic dataset (photo crops, captions, manifest), its digest and loaders;
* :mod:`.model`: tokenizer, VAE / UNet / text encoder, schedulers, pipeline assembly;
* :mod:`.train`: training the testbed (VAE, UNet + text encoder, decoder fine-tuning);
* :mod:`.clip`: a tiny open_clip model trained on the dataset (CLIP score and Frechet features);
* :mod:`.report`: `memprune testbed-report`, what the trained testbed copies and how well it generates;
* :mod:`.planted`: the planted testbed, memorization fine-tuned into a seeded set of GEGLU units, and its
  ground truth; :mod:`.cli`: its `memprune plant` command.
"""
