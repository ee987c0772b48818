"""Architecture search: architectures as graphs (:mod:`.graph`), graph edit distances (:mod:`.ged`) and the search
space. Import the submodules directly; this file stays light on purpose."""

#: Search spaces by ``search.space``: the supernet's (unlisted) model name and the ``search.*`` keys that are its
#: builder options (``model.arch``). Each supernet offers arch_parameters, weight_parameters, expected_latency,
#: smallest_latency, keys, describe and derive (chain: :mod:`.space_chain`; lgcnet: :mod:`.space_lgcnet`).
SPACES = {
    "chain": {"model": "chain_supernet",
              "options": ("input", "layers", "width_ratios", "base_widths", "stem_widths", "head_channels")},
    "lgcnet": {"model": "lgcnet_supernet",
               "options": ("input", "nodes", "base_widths", "stem_widths", "head_channels", "fusion", "share_cells",
                           "ggm_gamma")},
}
