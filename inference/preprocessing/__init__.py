"""From DICOM instances to model input: frames, stacks, pixels, intensity, resizing.

Every step keeps the way back: a `SourceFrame` names its instance and frame, a
`Stack` keeps its frames in slice order, and a `Fit` maps model pixels to source
pixels, so that masks, boxes and heatmaps land exactly on the source images.
"""
