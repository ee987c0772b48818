"""Architecture search: architectures as graphs (:mod:`.graph`), graph edit distances (:mod:`.ged`) and the search
space. Import the submodules directly; this file stays light on purpose."""
