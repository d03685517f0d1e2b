"""Dataset snapshots: sources -> validation -> balancing -> versioned arrays in the object store.

Decisions (also printed by `visionloop data build --help`):

- Resampling: an image that is not 32x32 is centre-cropped to a square and
  Lanczos-resampled (`ml.imaging.to_model_input`), the same call serving makes,
  so training and serving see the same pixels. Pixels are stored as uint8;
  scaling to [0, 1] happens inside the model.
- CIFAR: both the train and the test batches of the official archives are used;
  VisionLoop makes its own stratified splits from everything it ingests.
- Splits: stable. An image's split is a hash of its identity (the sha256 of its
  decoded 32x32 pixels, or `fb:<request_id>` for a user correction): about 10 %
  validation, 10 % test, the rest train. Adding images never moves an image to
  another split, so no test image of one snapshot is a training image of the
  next. Corrections never enter validation or test: each goes to train or, by a
  hash of its request id (`VISIONLOOP_CORRECTIONS_HOLDOUT`, default 0.3), to the
  held-out `corrections` split the registry gate measures on. Each split's
  identities are stored as `<split>/ids.npy`.
- Balancing: `Settings.class_target` is the number of images per class over all
  splits. A class below it gets rotated copies of its *train* images (90, 180
  and 270 degrees first, then small-angle rotations), added to train only, so
  validation and test hold real images and no rotation of them leaks into train.
- Outliers (ml.data.outliers): the images of `VISIONLOOP_OUTLIER_SOURCES` and the
  users' "none of these" corrections (class `user:none_of_these`, when `feedback`
  is a source) are stored as `outliers/{x,classes,source}.npy` with a manifest
  entry `outliers`; they are never class images. The OOD stage fits on them.
- Version: a hash of the sources' checksums (outlier sources included, when there
  are any) and the build parameters; the same inputs give the same version and a
  second build reuses the snapshot.
"""
