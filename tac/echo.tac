# The echo server as a twistd application file:
#   twistd -ny tac/echo.tac
# Options come from SOCKAPP_ARGS, parsed exactly as `twistd echo` parses
# its command line, e.g. SOCKAPP_ARGS="--port 5635 --verbose".
from twisted.application import service

from sockapp.tap import echo, options_from_environment

options = options_from_environment(echo.Options())

application = service.Application("sockapp-echo")
echo.makeService(options).setServiceParent(application)
