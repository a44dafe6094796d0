"""Taggers: texts in, entities with character offsets out, for a student, a teacher or an ONNX export.

One backend a module, and nothing imported here, so a stage pulls in only the backend it uses:
`core` (`NerTagger`: windows, batching, stitching), `teacher` (a token-classification teacher,
`teacher_tagger` windowed from params), `student` (a CRF student), `onnx` (an ONNX export) and
`load` (`load_tagger`: any model folder or hub id, by what the folder is).
"""
