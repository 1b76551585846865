"""The three Wav2Lip networks, written so that their state-dict keys and shapes equal the public checkpoints'.

- :class:`Wav2Lip`: the generator (audio mel window + masked/reference face -> lower-face prediction);
- :class:`SyncNet`: the lip-sync expert (5 lower-half frames + mel window -> L2-normalised embeddings);
- :class:`Wav2LipDiscriminator`: the visual-quality discriminator used for GAN refinement.

Block names (``conv_block``), module order and indices follow the reference so that public weights load with
``strict=True``; see ``shared/reference/wav2lip.md``. Faces are BGR in [0, 1], 96x96.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

Size = int | tuple[int, int]


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm + ReLU; with ``residual`` the input is added before the ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class TransposeBlock(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size, output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class PlainConvBlock(nn.Module):
    """Conv2d + LeakyReLU(0.01), no normalisation (the discriminator's blocks)."""

    def __init__(self, cin: int, cout: int, kernel: Size, stride: Size, padding: Size) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(channels: int) -> ConvBlock:
    return ConvBlock(channels, channels, 3, 1, 1, residual=True)


def _audio_encoder_front() -> list[nn.Module]:
    """The audio encoder's first ten blocks, shared by the generator and the expert: (1, 80, 16) -> (256, 3, 3)."""
    return [
        ConvBlock(1, 32, 3, 1, 1), _res(32), _res(32),
        ConvBlock(32, 64, 3, (3, 1), 1), _res(64), _res(64),
        ConvBlock(64, 128, 3, 3, 1), _res(128), _res(128),
        ConvBlock(128, 256, 3, (3, 2), 1),
    ]  # fmt: skip


class Wav2Lip(nn.Module):
    """The generator. ``forward(audio (B,1,80,16), faces (B,6,96,96)) -> (B,3,96,96)``; 5-D training input
    (B,T,1,80,16) and (B,6,T,96,96) is unstacked time-major and restacked to (B,3,T,96,96)."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),
            nn.Sequential(ConvBlock(16, 32, 3, 2, 1), _res(32), _res(32)),
            nn.Sequential(ConvBlock(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),
            nn.Sequential(ConvBlock(64, 128, 3, 2, 1), _res(128), _res(128)),
            nn.Sequential(ConvBlock(128, 256, 3, 2, 1), _res(256), _res(256)),
            nn.Sequential(ConvBlock(256, 512, 3, 2, 1), _res(512)),
            nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),
        ])  # fmt: skip
        self.audio_encoder = nn.Sequential(
            *_audio_encoder_front(), _res(256), ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
            nn.Sequential(TransposeBlock(1024, 512, 3, 1, 0), _res(512)),
            nn.Sequential(TransposeBlock(1024, 512, 3, 2, 1, 1), _res(512), _res(512)),
            nn.Sequential(TransposeBlock(768, 384, 3, 2, 1, 1), _res(384), _res(384)),
            nn.Sequential(TransposeBlock(512, 256, 3, 2, 1, 1), _res(256), _res(256)),
            nn.Sequential(TransposeBlock(320, 128, 3, 2, 1, 1), _res(128), _res(128)),
            nn.Sequential(TransposeBlock(160, 64, 3, 2, 1, 1), _res(64), _res(64)),
        ])  # fmt: skip
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def encode_face(self, faces: torch.Tensor) -> list[torch.Tensor]:
        """The face encoder's skip features, shallowest first. They depend only on the face input, so a fixed
        avatar frame's features can be computed once and reused for every audio window."""
        features = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        return features

    def decode(self, audio: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The prediction from a mel window and the face encoder's features."""
        x = self.audio_encoder(audio)
        for block, skip in zip(self.face_decoder_blocks, reversed(features), strict=True):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() > 4:
            batch, steps = audio.size(0), faces.size(2)
            audio = torch.cat([audio[:, i] for i in range(audio.size(1))], dim=0)
            faces = torch.cat([faces[:, :, i] for i in range(steps)], dim=0)
            out = self.decode(audio, self.encode_face(faces))
            return torch.stack(torch.split(out, batch, dim=0), dim=2)
        return self.decode(audio, self.encode_face(faces))


class SyncNet(nn.Module):
    """The lip-sync expert. ``forward(audio (B,1,80,16), faces (B,15,48,96)) -> (audio_emb, face_emb)``, each
    (B, 512), L2-normalised; their cosine similarity lies in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(
            ConvBlock(15, 32, 7, 1, 3),
            ConvBlock(32, 64, 5, (1, 2), 1), _res(64), _res(64),
            ConvBlock(64, 128, 3, 2, 1), _res(128), _res(128), _res(128),
            ConvBlock(128, 256, 3, 2, 1), _res(256), _res(256),
            ConvBlock(256, 512, 3, 2, 1), _res(512), _res(512),
            ConvBlock(512, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )  # fmt: skip
        self.audio_encoder = nn.Sequential(
            *_audio_encoder_front(), _res(256), _res(256), ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)
        )

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        face_embedding = self.face_encoder(faces).flatten(1)
        audio_embedding = self.audio_encoder(audio).flatten(1)
        return F.normalize(audio_embedding, p=2, dim=1), F.normalize(face_embedding, p=2, dim=1)


class Wav2LipDiscriminator(nn.Module):
    """The visual-quality discriminator: (B,3,T,96,96) or (B,3,96,96) faces -> (B*T, 1) probability of real.
    It looks at the lower half (rows 48-95) only."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(PlainConvBlock(3, 32, 7, 1, 3)),
            nn.Sequential(PlainConvBlock(32, 64, 5, (1, 2), 2), PlainConvBlock(64, 64, 5, 1, 2)),
            nn.Sequential(PlainConvBlock(64, 128, 5, 2, 2), PlainConvBlock(128, 128, 5, 1, 2)),
            nn.Sequential(PlainConvBlock(128, 256, 5, 2, 2), PlainConvBlock(256, 256, 5, 1, 2)),
            nn.Sequential(PlainConvBlock(256, 512, 3, 2, 1), PlainConvBlock(512, 512, 3, 1, 1)),
            nn.Sequential(PlainConvBlock(512, 512, 3, 2, 1), PlainConvBlock(512, 512, 3, 1, 1)),
            nn.Sequential(PlainConvBlock(512, 512, 3, 1, 0), PlainConvBlock(512, 512, 1, 1, 0)),
        ])  # fmt: skip
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1, 1, 0), nn.Sigmoid())

    @staticmethod
    def lower_half(faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() > 4:
            faces = torch.cat([faces[:, :, i] for i in range(faces.size(2))], dim=0)
        return faces[:, :, faces.size(2) // 2 :]

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = self.lower_half(faces)
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(len(x), -1)


MODEL_KINDS: dict[str, type[nn.Module]] = {
    "generator": Wav2Lip,
    "syncnet": SyncNet,
    "discriminator": Wav2LipDiscriminator,
}
"""Model kinds as weights files record them."""
