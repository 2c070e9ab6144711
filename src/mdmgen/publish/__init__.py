"""Publishers: put the compiled output folder where MDM and config-management jobs pull from.

``base`` holds what every publisher shares (plan, deletion guard, bounded apply, retries),
``local`` reads and checks the output folder, and each target has its own module (``s3``).
"""
