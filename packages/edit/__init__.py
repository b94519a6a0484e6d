"""forecache.edit: region caching for image editing, recomputing only the edited region
(EEdit, FISEdit masks). Builds on forecache.core; nothing is implemented here yet."""
