"""The Lambda function's entry point, `fusioncast.serve.lambda_entry.handler` (the image's CMD).

Lambda imports this module once per execution environment, in its init phase: the import, the bundle's
load and the model's warm-up happen here, before the first request, and never again.
"""

from fusioncast.serve.aws_lambda import LambdaHandler

handler = LambdaHandler.from_env()
