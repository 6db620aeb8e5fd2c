"""A team's own training code, as tidal's workers load it: ``byo_team.data:points``,
``byo_team.models:two_layer``, ``byo_team.losses:smoothed_cross_entropy``."""
