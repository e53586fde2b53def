"""Readers that turn each data-set layout into :class:`~calid_lightning.data.subject.CardiacSubject`."""
