from control.meshctl.launch import meshctl

meshctl()
