"""ALDM (Kim & Park, WACV 2024): one-to-many 3D latent diffusion with a VQ-GAN and MS-SPADE."""
