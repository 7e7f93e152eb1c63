from control.launch import mesh_control

mesh_control()
