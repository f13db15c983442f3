"""Tool calls on the wire, per format: what a request declares and sends back, and a sans-IO guard per response
format that holds each call back until its arguments are complete, has it judged, and releases, strips or blocks it.
"""
