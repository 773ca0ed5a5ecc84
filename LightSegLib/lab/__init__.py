"""The workshop: what builds the models (networks, data readers, training, compression, export, evaluation,
publishing, bench recording). Needs the training install (torch, MONAI, Torch-Pruning). It imports the runtime
(``LightSegLib``); the runtime never imports it, and neither the Slicer extension nor a plain install needs it."""
