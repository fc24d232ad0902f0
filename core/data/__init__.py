"""Data: the Oxford-IIIT Pet layout, its reader and cache, the synthetic set, download, augmentation."""
