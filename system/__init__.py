"""alignray: a Ray-distributed actor-learner RLHF system. Importing it installs the library patches
(alignray.patches)."""

from alignray import patches

patches.install()
