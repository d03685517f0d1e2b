"""Dataset snapshots: sources -> validation -> balancing -> versioned arrays in the object store.

Decisions (also printed by `visionloop data build --help`):

- Resampling: an image that is not 32x32 is centre-cropped to a square and
  Lanczos-resampled (`ml.imaging.to_model_input`), the same call serving makes,
  so training and serving see the same pixels. Pixels are stored as uint8;
  scaling to [0, 1] happens inside the model.
- CIFAR: both the train and the test batches of the official archives are used;
  VisionLoop makes its own stratified splits from everything it ingests.
- Splits: per class, a seeded shuffle, then 10 % validation, 10 % test (rounded
  down) and the rest train.
- Balancing: `Settings.class_target` is the number of images per class over all
  splits. A class below it gets rotated copies of its *train* images (90, 180
  and 270 degrees first, then small-angle rotations), added to train only, so
  validation and test hold real images and no rotation of them leaks into train.
- Version: a hash of the sources' checksums and the build parameters; the same
  inputs give the same version and a second build reuses the snapshot.
"""
