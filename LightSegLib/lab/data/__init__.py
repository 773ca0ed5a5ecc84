"""Datasets for training and evaluation: MSD / nnU-Net layout reader, 2D slice sampling, MONAI augmentation."""
