"""Data: readers per dataset layout, synthetic faces, transforms, the prepare step, loaders
and the LightningDataModule that puts them together."""
