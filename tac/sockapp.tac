# The search server as a twistd application file:
#   twistd -ny tac/sockapp.tac
# Options come from SOCKAPP_ARGS, parsed exactly as `twistd sockapp` parses
# its command line, e.g. SOCKAPP_ARGS="--port 5635 --data answers.json".
from twisted.application import service

from sockapp.tap import search, options_from_environment

options = options_from_environment(search.Options())

application = service.Application("sockapp")
search.makeService(options).setServiceParent(application)
