"""Publishers: put the compiled output folder where MDM and config-management jobs pull from.

``flow`` is the one publish flow every target plugs into; ``base`` holds what the targets share
(plan, deletion guard, bounded apply, retries); ``http`` is the one HTTP layer; ``defaults`` the
numbers ``--help`` shows; ``local`` reads the output folder strictly for publishing; each target
has its own module or package (``s3``, ``jamf``).
"""
